"""Fine-tuning (issue 15): timm's parts wired as MAE's recipe, checked on tiny real timm models.

Layer decay groups equal timm's own; Mixup/CutMix targets are distributions; the pure helpers
against hand-computed values; a tiny fine-tune learns; a resumed run equals an uninterrupted
one; ``hssl train`` -> ``hssl export`` -> ``hssl finetune`` through the console script.
"""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay

from tests.cli_helpers import BIN, TINY_FLAGS, run
from tests.test_layering import FORBIDDEN, HEAVY, absent_after_import
from training.errors import SpecError
from training.finetune import FinetuneConfig, run_finetune
from training.finetune.build import build_model
from training.finetune.data import centre_crop, decode_size
from training.finetune.init import InitWeights, load_init
from training.finetune.metrics import topk_correct
from training.finetune.parts import (
    accumulation_steps,
    make_criterion,
    make_mixup,
    make_optimizer,
    make_scheduler,
    scaled_lr,
)
from training.finetune.session import CHECKPOINT_NAME, LOG_NAME

VIT = dict(model="vit_tiny_patch16_224", img_size=16, patch_size=4, depth=2, width=32)
# A tiny run of the proxy recipe on the synthetic set (10 classes): ~1 s an epoch here.
TINY = FinetuneConfig.from_recipe(
    "proxy", **{**VIT, "depth": 1}, data="synthetic", data_limit=160, heldout=0.25, batch_size=16
)


def _names(model, params) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return sorted(by_id[id(p)] for p in params)


def _groups(model, groups) -> list[tuple[float, float, list[str]]]:
    return sorted((g["lr_scale"], g["weight_decay"], _names(model, g["params"])) for g in groups)


def _tiny_convnext():
    kw = dict(depths=(1, 1, 1, 1), dims=(16, 16, 32, 32), global_pool="avg", num_classes=5)
    return timm.create_model("convnext_atto", pretrained=False, **kw)


@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_layer_decay_groups_are_timms_own(family):
    config = FinetuneConfig.from_recipe("proxy", **VIT, layer_decay=0.5, data="synthetic")
    if family == "vit":
        model, _ = build_model(config, None, num_classes=5)
    else:
        model = _tiny_convnext()
    optimizer = make_optimizer(model, config, lr=1.0)
    reference = param_groups_layer_decay(
        model,
        weight_decay=0.05,
        layer_decay=0.5,
        no_weight_decay_list=getattr(model, "no_weight_decay", set)(),
    )
    assert _groups(model, optimizer.param_groups) == _groups(model, reference)
    scale = {n: g["lr_scale"] for g in optimizer.param_groups for n in _names(model, g["params"])}
    # Hand-computed: 0.5 ** (layers above), stem lowest, the classifier at 1 (MAE's grouping).
    if family == "vit":  # stem, blocks.0, blocks.1, head: 2 blocks -> 0.5^3, 0.5^2, 0.5, 1
        expected = {"pos_embed": 0.125, "blocks.0.attn.qkv.weight": 0.25}
        expected |= {"blocks.1.mlp.fc2.weight": 0.5, "fc_norm.weight": 1.0, "head.weight": 1.0}
    else:  # stem, one block per stage x 4, head: 0.5^5 ... 1
        expected = {"stem.0.weight": 1 / 32, "stages.0.blocks.0.conv_dw.weight": 1 / 16}
        expected |= {"stages.3.blocks.0.mlp.fc1.weight": 0.5, "head.fc.weight": 1.0}
    assert {n: scale[n] for n in expected} == pytest.approx(expected)
    no_decay = [n for g in optimizer.param_groups if g["weight_decay"] == 0 for n in
                _names(model, g["params"])]  # fmt: skip
    assert {n for n in scale if n.endswith("bias")} <= set(no_decay)
    # timm's scheduler applies each group's scale to the lr it sets
    make_scheduler(optimizer, config.with_(warmup_epochs=0), 4).step_update(0)
    assert all(g["lr"] == pytest.approx(g["lr_scale"]) for g in optimizer.param_groups)


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_and_cutmix_targets_are_distributions(mixup, cutmix):
    config = FinetuneConfig.from_recipe("mae", mixup=mixup, cutmix=cutmix, data="synthetic")
    mix = make_mixup(config, num_classes=10)
    torch.manual_seed(0)
    for _ in range(5):
        images, labels = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
        _, targets = mix(images.clone(), labels)
        assert targets.shape == (8, 10)
        assert torch.allclose(targets.sum(dim=1), torch.ones(8), atol=1e-6)
        assert bool((targets >= 0.1 / 10 - 1e-7).all())  # smoothing 0.1 leaves 0.01 everywhere
        # batch mode mixes image i with image n-1-i (weights lam, 1 - lam), so a pair's targets
        # add up to its two smoothed one-hot labels whatever lam was drawn
        smooth = torch.nn.functional.one_hot(labels, 10) * 0.9 + 0.01
        assert torch.allclose(targets + targets.flip(0), smooth + smooth.flip(0), atol=1e-6)
    assert isinstance(make_criterion(config), SoftTargetCrossEntropy)
    plain = config.with_(mixup=0.0, cutmix=0.0)
    assert make_mixup(plain, 10) is None
    assert isinstance(make_criterion(plain), LabelSmoothingCrossEntropy)


def test_pure_helpers_against_hand_computed_values():
    assert accumulation_steps(1024, 128, 8) == 1 and accumulation_steps(1024, 128, 1) == 8
    assert accumulation_steps(None, 64, 2) == 1
    with pytest.raises(SpecError, match="not a multiple"):
        accumulation_steps(1024, 128, 3)
    assert scaled_lr(5e-4, 1024) == pytest.approx(2e-3)  # MAE: blr 5e-4 x 1024 / 256
    assert decode_size(224, 224 / 256) == 256 and decode_size(32, 1.0) == 32
    crop = centre_crop(torch.arange(36.0).view(1, 1, 6, 6), 2)
    assert crop.flatten().tolist() == [14.0, 15.0, 20.0, 21.0]
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.2], [0.3, 0.2, 0.5]])
    assert topk_correct(logits, torch.tensor([1, 2, 1]), (1, 2, 5)) == [1, 2, 3]


def test_schedule_warms_up_linearly_then_follows_a_half_cosine():
    config = FinetuneConfig.from_recipe("proxy", epochs=3, warmup_epochs=1, min_lr=0.0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer, config, updates_per_epoch=2)
    lrs = []
    for update in range(6):
        scheduler.step_update(update)
        lrs.append(optimizer.param_groups[0]["lr"])
    c = math.cos(math.pi / 4)  # cosine over the 4 updates after warm-up
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.5 + 0.5 * c, 0.5, 0.5 - 0.5 * c])


def test_mae_recipe_is_the_papers_and_flags_override_it():
    mae = FinetuneConfig.from_recipe("mae")
    assert (mae.epochs, mae.effective_batch, mae.warmup_epochs) == (100, 1024, 5)
    assert scaled_lr(mae.lr, mae.effective_batch) == pytest.approx(2e-3)
    assert (mae.weight_decay, mae.layer_decay, mae.min_lr, mae.drop_path) == (
        0.05, 0.65, 1e-6, 0.1,
    )  # fmt: skip
    assert (mae.mixup, mae.cutmix, mae.smoothing, mae.re_prob) == (0.8, 1.0, 0.1, 0.25)
    assert mae.auto_augment == "rand-m9-mstd0.5-inc1" and mae.global_pool == "avg"
    assert FinetuneConfig.from_recipe("mae", epochs=10, lr=None).epochs == 10
    with pytest.raises(SpecError, match="recipe"):
        FinetuneConfig.from_recipe("beit")


def test_a_timm_checkpoint_loads_except_its_classifier_and_a_foreign_one_is_refused(tmp_path):
    kw = dict(img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=1)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000, **kw)
    torch.save(source.state_dict(), tmp_path / "imagenet.pth")
    init = load_init(str(tmp_path / "imagenet.pth"))
    config = TINY.with_(init=str(tmp_path / "imagenet.pth"))
    model, info = build_model(config, init, num_classes=10)
    assert init.kind == "timm" and info["fresh"] == ["fc_norm.bias", "fc_norm.weight"]
    assert torch.equal(model.pos_embed, source.pos_embed)
    assert model.head.weight.shape == (10, 32) and model.head.weight.abs().max() < 1e-3
    deeper = {**init.state, "blocks.1.norm1.weight": torch.ones(32)}
    with pytest.raises(SpecError, match="does not fit"):
        build_model(config, InitWeights("timm", "deeper.pth", state=deeper), 10)
    wider = {**init.state, "pos_embed": torch.zeros(1, 17, 64)}
    with pytest.raises(SpecError, match="pos_embed"):
        build_model(config, InitWeights("timm", "wider.pth", state=wider), 10)


def test_a_tiny_finetune_on_synthetic_data_learns():
    config = TINY.with_(data_limit=300, heldout=0.2, epochs=8, lr=2e-2, depth=1)
    result = run_finetune(config)
    assert result.status == "completed" and result.epochs_done == 8, result.reason
    assert result.metrics["top1"] > 0.3, result.history  # chance is 0.1 (10 classes, 60 held out)
    assert result.metrics["top5"] >= result.metrics["top1"]
    assert result.history[0]["loss"] > result.history[-1]["loss"]


def test_resume_equals_an_uninterrupted_run(tmp_path):
    # gradient accumulation (2 micro-batches a step) and the model EMA are resumed too
    config = TINY.with_(epochs=2, effective_batch=32, ema_decay=0.9)
    straight = run_finetune(config, tmp_path / "a")
    cut = run_finetune(config, tmp_path / "b", report=lambda epoch, record: epoch >= 1)
    assert cut.status == "stopped" and cut.epochs_done == 1
    refused = run_finetune(config, tmp_path / "b")
    assert refused.status == "failed" and "--resume" in refused.reason
    resumed = run_finetune(config, tmp_path / "b", resume=True)
    assert resumed.status == "completed" and resumed.epochs_done == 2
    assert straight.accum_steps == 2 and "top1_ema" in straight.metrics
    assert resumed.history == straight.history
    a = torch.load(tmp_path / "a" / CHECKPOINT_NAME, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=True)
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    log = [json.loads(line) for line in (tmp_path / "b" / LOG_NAME).read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and log[-1] == straight.metrics


@pytest.mark.slow
def test_train_export_finetune_round_trip_through_the_console_script(tmp_path):
    train = run([str(BIN / "hssl"), "train", *TINY_FLAGS, "--out", str(tmp_path / "run")])
    assert train.returncode == 0, train.stderr[-2000:]
    export = run(
        [str(BIN / "hssl"), "export", str(tmp_path / "run" / "checkpoint.pt"), "--out",
         str(tmp_path / "base.safetensors")]
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    # layer decay 1e-6 leaves the stem's lr at 1e-12 of the head's: after an epoch of training
    # the stem still equals the exported tensors, so they must have been loaded
    out = tmp_path / "ft"
    args = ["--init", str(tmp_path / "base.safetensors"), "--data", "synthetic"]
    args += ["--data-limit", "160", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "16"]
    args += ["--layer-decay", "1e-6", "--no-progress", "--out", str(out)]
    proc = run([str(BIN / "hssl"), "finetune", *args])
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "completed" and result["init"]["kind"] == "export"
    assert result["model"]["name"] == "vit_tiny_patch16_224" and result["model"]["loaded"] > 0
    assert result["model"]["fresh"] == ["fc_norm.bias", "fc_norm.weight"]
    assert "epoch 1 · loss" in proc.stderr
    exported = load_file(str(tmp_path / "base.safetensors"))
    tuned = torch.load(out / CHECKPOINT_NAME, weights_only=True)["model"]
    for key in ("pos_embed", "cls_token", "patch_embed.proj.weight"):
        assert torch.allclose(tuned[key], exported[key], atol=1e-6), key
    assert bool(tuned["head.bias"].ne(0).any())  # the fresh head (zero bias at start) trained
    assert len((out / LOG_NAME).read_text().splitlines()) == 1
    # the run folder itself is an init too: the same tensors as its export
    run_init = load_init(str(tmp_path / "run"))
    assert run_init.kind == "run" and run_init.model == "vit_tiny_patch16_224"
    assert run_init.state.keys() == exported.keys()
    assert all(torch.equal(run_init.state[k], exported[k]) for k in exported)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--init", "{tmp}/missing.safetensors"], "missing.safetensors does not exist"),
        (["--init", "none", "--model", "vit_tny_patch16_224"], "did you mean"),
        (["--init", "{tmp}", "--model", "vit_tiny_patch16_224"], "without a readable"),
    ],
)
def test_bad_init_or_model_is_one_error_line(tmp_path, args, expected):
    args = [a.format(tmp=tmp_path) for a in args]
    proc = run([str(BIN / "hssl"), "finetune", *args, "--data", "synthetic"], timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected in lines[0]


def test_the_clis_checks_of_its_input_import_no_torch_timm_or_upper_layer():
    absent_after_import(("training.finetune", "training.finetune.resolve"), HEAVY + FORBIDDEN)


def _folder(root, classes, per_class=4):
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20, 20), (40 * c + 10 * i, 200 - 50 * c, 90)).save(
                root / name / f"{i}.png"
            )
    return str(root)


def test_an_image_folder_trains_and_a_val_folder_is_the_held_out_set(tmp_path):
    train = _folder(tmp_path / "train", ["cat", "dog"])
    val = _folder(tmp_path / "val", ["cat", "dog"], per_class=3)
    config = TINY.with_(data=train, val_data=val, data_limit=None, epochs=1, warmup_epochs=0)
    result = run_finetune(config.with_(batch_size=4))
    assert result.status == "completed", result.reason
    assert result.steps_per_epoch == 2  # all 8 training images, none held out
    assert result.metrics["top1"] in {k / 6 for k in range(7)}  # all 6 validation images
    other = _folder(tmp_path / "other", ["cat", "fox"])
    failed = run_finetune(config.with_(batch_size=4, val_data=other))
    assert failed.status == "failed" and "same class folders" in failed.reason
