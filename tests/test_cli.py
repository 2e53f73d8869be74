"""``hssl train`` / ``export`` / ``heads`` through the real console script."""

import json

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from tests.cli_helpers import BIN, TINY_FLAGS, run
from training.runtime import checkpoint


@pytest.mark.slow
def test_train_prints_json_metrics_and_writes_a_checkpoint_then_exports_for_timm(tmp_path):
    proc = run([str(BIN / "hssl"), "train", *TINY_FLAGS, "--out", str(tmp_path / "run")])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "completed" and result["epochs_done"] == 1
    for key in ("knn_cls", "linear", "d_loss", "d_kl", "d_cka"):
        assert isinstance(result["metrics"][key], float)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    assert result["checkpoint"] == str(ckpt) and ckpt.is_file()

    out = tmp_path / "base.safetensors"
    proc = run([str(BIN / "hssl"), "export", str(ckpt), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(out), num_classes=0),
        **info["create_model_kwargs"],
    )
    teacher = checkpoint.load(ckpt)["teacher"]
    loaded = model.state_dict()
    assert set(loaded) == set(load_file(str(out)))  # no missing or unexpected keys
    assert all(torch.equal(loaded[k], teacher["base.model." + k]) for k in loaded)
    # a downstream model with its own class count starts a fresh classifier on top
    downstream = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=True,
        num_classes=7,
        pretrained_cfg_overlay=dict(file=str(out), num_classes=0),
        **info["create_model_kwargs"],
    )
    assert torch.equal(downstream.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    assert downstream.head.out_features == 7


@pytest.mark.slow
def test_bad_input_gets_one_actionable_line_and_no_traceback(tmp_path):
    cases = {
        "unknown head family 'convnxt'": ["--head", "convnxt:depth=2"],
        "did you mean: vit_tiny_patch16_224": ["--base", "vit_tny_patch16_224"],
        str(tmp_path / "nowhere"): ["--data", str(tmp_path / "nowhere")],
        "head option depth must be an integer": ["--head", "mlp:depth=two"],
    }
    for expected, flags in cases.items():
        args = [str(BIN / "hssl"), "train", *TINY_FLAGS, *flags, "--out", str(tmp_path / "x")]
        proc = run(args)
        assert proc.returncode in (1, 2), (flags, proc.returncode)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert expected in lines[0] and "Traceback" not in proc.stderr


def test_config_file_and_flags_compose(tmp_path):
    from service.cli.train import build_config

    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump({"trial_config": {"epochs": 7, "heads": [{"family": "mlp"}]}}))
    cfg = build_config(config=path, recipe="proxy", baseline=False, head=None, epochs=2, lr=None)
    assert cfg.epochs == 2 and cfg.heads[0].family == "mlp"
    paper = build_config(config=None, recipe="paper", baseline=True, head=None, epochs=None)
    assert paper.heads == () and paper.out_dim == 8192 and paper.epochs == 100


@pytest.mark.slow
def test_heads_lists_every_family():
    proc = run([str(BIN / "hssl"), "heads"])
    assert proc.returncode == 0
    names = [entry["name"] for entry in json.loads(proc.stdout)]
    assert names == ["convnext", "resnet", "transformer", "mlp", "pool"]


def test_the_remote_ranking_ends_with_the_quality_signal_line():
    from service.cli.remote import ranking_lines

    row = {"rank": 1, "label": "mlp-d1-nores", "mean": {"d_kl": 0.2, "knn_cls": 0.4}}
    row |= {"sd": {"d_kl": 0.01, "knn_cls": 0.02}, "floor": {"knn_cls": 0.39}}
    line = "quality signal: none yet — ranked on discrepancy alone (a single seed)"
    lines = ranking_lines({"objectives": ["d_kl"], "heads": [row], "signal": {"line": line}})
    assert lines[1].startswith("1    mlp-d1-nores") and "(floor 0.390)" in lines[1]
    assert lines[-1] == line
    assert ranking_lines({"objectives": ["d_kl"], "heads": [row]})[-1] == lines[1]
    from search.evidence import evidence_card

    card = evidence_card(["d_kl"], {}, "mlp-d1-nores")
    with_card = ranking_lines({"objectives": ["d_kl"], "heads": [row], "evidence": card})
    assert with_card[-1] == "  why: " + card["why"] and "evidence: ranked by D_kl" in with_card
    row["se"] = {"knn_cls": 0.0055}  # a server that measured the reading's sampling SE
    assert "(se 0.005, floor 0.390)" in ranking_lines({"objectives": ["d_kl"], "heads": [row]})[1]
