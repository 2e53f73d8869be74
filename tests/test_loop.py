"""The trial loop end to end on tiny synthetic data: completes, reports, stops, fails cleanly,
resumes exactly, and logs one JSON line per epoch."""

import pytest
import torch

from training.loop.train import run_trial
from training.recipe import TrialConfig
from training.runtime import checkpoint, runlog
from training.specs import BaseSpec, HeadSpec

TINY = TrialConfig(
    base=BaseSpec(name="vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1, width=32),
    heads=(HeadSpec("convnext", depth=1, kernel=3),),
    data="synthetic",
    data_limit=160,
    heldout=0.25,
    epochs=2,
    batch_size=16,
    out_dim=64,
    proj_hidden=32,
    proj_bottleneck=16,
    eval_bank_limit=None,
)


def test_completes_with_metrics_and_reports_every_epoch():
    reports = []
    result = run_trial(TINY, lambda epoch, m: reports.append((epoch, m)) or False)
    assert result.status == "completed" and result.epochs_done == 2
    assert [epoch for epoch, _ in reports] == [0, 1, 2]
    init, final = result.init_metrics, result.metrics
    assert 0.0 <= init["knn_cls"] <= 1.0 and "linear" in init  # the random-init floor
    for key in ("knn_cls", "knn_patch", "linear", "d_loss", "h_target", "d_kl", "d_cka", "loss"):
        assert key in final, key
    assert final["d_kl"] == pytest.approx(final["d_loss"] - final["h_target"])
    assert final["heads"][0]["head"] == "convnext-d1-k3-nores"
    assert len(result.history) == 2 and result.images_per_s > 0 and result.peak_memory_mb > 0


def test_on_step_hears_progress_inside_every_epoch(monkeypatch):
    import training.loop.train as loop

    monkeypatch.setattr(loop, "PROGRESS_EVERY_S", 0.0)  # every step, to see them all
    steps: list[dict] = []
    assert run_trial(TINY, on_step=steps.append).status == "completed"
    per_epoch = steps[-1]["steps"]
    assert [(d["epoch"], d["step"]) for d in steps] == [
        (e, i) for e in (1, 2) for i in range(1, per_epoch + 1)
    ]
    assert all(d["epochs"] == 2 and d["images_per_s"] > 0 for d in steps)


def test_report_callback_stops_the_run():
    result = run_trial(TINY, lambda epoch, metrics: epoch >= 1)
    assert result.status == "stopped" and result.epochs_done == 1


def test_non_finite_loss_fails_the_trial_with_a_reason():
    result = run_trial(TINY.with_(student_temp=1e-45))
    assert result.status == "failed"
    assert "loss became" in result.reason and "epoch 1" in result.reason


def test_bad_data_fails_the_trial_with_a_reason(tmp_path):
    result = run_trial(TINY.with_(data=str(tmp_path / "missing")))
    assert result.status == "failed" and str(tmp_path / "missing") in result.reason


def test_baseline_and_dino_variants_run():
    baseline = run_trial(TINY.with_(heads=(), epochs=1, linear_probe=False))
    assert baseline.status == "completed" and "d_loss" not in baseline.metrics
    assert "loss_cls2" not in baseline.metrics and "loss_mim" in baseline.metrics
    dino = run_trial(TINY.with_(variant="dino", epochs=1, linear_probe=False))
    assert dino.status == "completed" and "loss_mim" not in dino.metrics


def test_two_heads_are_scored_separately():
    heads = (HeadSpec("convnext", depth=1, kernel=3), HeadSpec("mlp", depth=1))
    result = run_trial(TINY.with_(heads=heads, epochs=1, linear_probe=False))
    rows = result.metrics["heads"]
    assert [r["head"] for r in rows] == ["convnext-d1-k3-nores", "mlp-d1-nores"]
    assert rows[0]["d_cka"] != rows[1]["d_cka"]


@pytest.mark.slow
def test_resume_continues_exactly_where_an_uninterrupted_run_would_be(tmp_path):
    straight = run_trial(TINY, output_dir=tmp_path / "a")
    cut = run_trial(TINY, lambda epoch, m: epoch >= 1, output_dir=tmp_path / "b")
    assert (
        cut.status == "stopped" and checkpoint.load(tmp_path / "b" / "checkpoint.pt")["epoch"] == 1
    )
    resumed = run_trial(TINY, output_dir=tmp_path / "b")
    assert resumed.status == "completed" and resumed.epochs_done == 2
    assert resumed.metrics["loss"] == pytest.approx(straight.metrics["loss"], rel=1e-5)
    a = checkpoint.load(tmp_path / "a" / "checkpoint.pt")["teacher"]
    b = checkpoint.load(tmp_path / "b" / "checkpoint.pt")["teacher"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    run_trial(TINY.with_(epochs=1, linear_probe=False), output_dir=tmp_path)
    result = run_trial(TINY.with_(epochs=1, linear_probe=False, seed=5), output_dir=tmp_path)
    assert result.status == "failed" and "another configuration" in result.reason


def without_timing(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in runlog.TIMING_FIELDS} for line in lines]


def test_log_has_a_line_per_epoch_with_schedules_timing_and_diagnostics(tmp_path):
    result = run_trial(TINY, output_dir=tmp_path)
    log = runlog.read(tmp_path / runlog.FILENAME)
    assert [line["epoch"] for line in log] == [0, 1, 2]
    assert "knn_cls" in log[0] and "loss" not in log[0]  # the floor, before any training
    for line, record in zip(log[1:], result.history, strict=True):
        assert without_timing([line]) == [record]  # the history record, plus timing
        assert line["images_per_s"] > 0 and line["epoch_time_s"] > 0
        for key in ("loss", "lr", "wd", "teacher_temp", "target_entropy", "target_spread"):
            assert key in line, key
    assert log[1]["lr"] != log[2]["lr"]  # the schedule's value at each epoch's last step


@pytest.mark.slow
def test_resumed_log_equals_an_uninterrupted_runs_without_duplicates(tmp_path):
    """Cut after epoch 1 (checkpointed); then, as if killed after logging epoch 2 but before
    checkpointing it, a stale epoch-2 line and a torn line follow. The resumed log holds each
    epoch once and matches the uninterrupted run's, up to the timing fields."""
    run_trial(TINY, output_dir=tmp_path / "a")
    run_trial(TINY, lambda epoch, m: epoch >= 1, output_dir=tmp_path / "b")
    path = tmp_path / "b" / runlog.FILENAME
    cut = runlog.read(path)
    assert [line["epoch"] for line in cut] == [0, 1]
    with path.open("a") as fh:
        fh.write('{"epoch": 2, "loss": 123.0}\n{"epoch": 3, "lo')
    assert run_trial(TINY, output_dir=tmp_path / "b").status == "completed"
    straight, resumed = runlog.read(tmp_path / "a" / runlog.FILENAME), runlog.read(path)
    assert [line["epoch"] for line in resumed] == [0, 1, 2]
    assert resumed[:2] == cut  # lines of checkpointed epochs are kept as written
    assert without_timing(resumed[:2]) == without_timing(straight[:2])
    expected, got = without_timing(straight[2:])[0], without_timing(resumed[2:])[0]
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
        else:
            assert got[key] == value, key


def test_a_checkpoint_from_before_a_new_knob_resumes_when_the_knob_is_at_its_default():
    """An upgrade that adds a TrialConfig field does not orphan a run that never set it; a
    checkpoint of another setting is still refused."""
    from training.fields import same_config
    from training.recipe import TrialConfig

    config = TrialConfig(seed=3)
    older = config.to_dict()
    del older["compile"]  # written before the field existed
    assert same_config(TrialConfig, older, config)
    assert not same_config(TrialConfig, older, TrialConfig(seed=3, compile=True))
    assert not same_config(TrialConfig, {**older, "seed": 4}, config)
    assert not same_config(TrialConfig, {**older, "gone": 1}, config)  # a field since removed
    assert not same_config(TrialConfig, None, config)
