"""A run evaluates on a held-out set sized apart from its training set (issue 21): every
held-out image at initialisation and at the end, a fixed subset in between, at the epochs it is
told; each probe reading with its sampling SE, the estimators beside the probes."""

from __future__ import annotations

import math

import pytest

from training.errors import SpecError
from training.loop.train import run_trial
from training.recipe import TrialConfig
from training.specs import BaseSpec, HeadSpec


def _config(**kw) -> TrialConfig:
    return TrialConfig.proxy(
        base=BaseSpec(img_size=16, patch_size=4, depth=1, width=32),
        heads=(HeadSpec(family="convnext", depth=1, kernel=3),),
        data="digits",
        data_limit=300,
        epochs=3,
        batch_size=32,
        out_dim=64,
        proj_hidden=32,
        proj_bottleneck=16,
        device="cpu",
        **kw,
    )


def test_whole_heldout_set_first_and_last_the_interim_subset_between() -> None:
    result = run_trial(_config(heldout_images=900, interim_eval_images=200, eval_epochs=(2,)))
    assert result.status == "completed", result.reason
    assert [h["epoch"] for h in result.history if "knn_cls" in h] == [2, 3]  # eval_epochs + last
    init, middle, last = result.init_metrics, result.history[1], result.history[2]
    assert (init["heldout_n"], middle["heldout_n"], last["heldout_n"]) == (900, 200, 900)
    for reading in (init, middle, last):
        for key in ("knn_cls", "knn_patch"):
            p, n = reading[key], reading["heldout_n"]
            assert reading[f"{key}_se"] == pytest.approx(math.sqrt(p * (1 - p) / n))
        assert 1.0 <= reading["rankme"] <= 32.0  # at most the feature width
        assert math.isfinite(reading["alpha_req"])
    assert "linear_se" in last and "linear_se" not in middle  # the linear probe ends the run
    assert "pixels_knn_se" in init
    assert math.isfinite(last["d_kl"]) and math.isfinite(last["target_information"])


def test_without_the_new_fields_a_run_evaluates_as_before() -> None:
    result = run_trial(_config(eval_every=1))
    assert result.status == "completed", result.reason
    assert result.init_metrics["heldout_n"] == 60  # the held-out fifth of data_limit
    assert [h["heldout_n"] for h in result.history] == [60, 60, 60]


def test_eval_epochs_are_checked() -> None:
    with pytest.raises(SpecError, match="eval_epochs"):
        _config(eval_epochs=(0,))
    with pytest.raises(SpecError, match="eval_epochs"):
        _config(eval_epochs=(4,))
    config = _config(eval_epochs=[1, 2])
    assert TrialConfig.from_dict(config.to_dict()) == config
    assert [config.due(e) for e in (1, 2, 3)] == [True, True, True]
    assert [_config(eval_every=0).due(e) for e in (1, 2, 3)] == [False, False, True]


def test_one_pass_serves_teacher_and_student_at_init_and_changes_no_result(monkeypatch) -> None:
    """At initialisation the teacher is the student's copy: its BN recalibration and its views
    serve both (issue 24). Same seed, with and without the shortcut: every metric identical."""
    import training.loop.session_eval as session_eval
    from training.runtime.runlog import TIMING_FIELDS

    calls = {"twins": 0}
    real = session_eval.same_weights

    def counted(a, b):
        same = real(a, b)
        calls["twins"] += same
        return same

    config = _config(heldout_images=300, interim_eval_images=100, eval_epochs=(1,))
    assert config.recalibrate_bn and config.proj_bn  # BatchNorms whose statistics are copied
    monkeypatch.setattr(session_eval, "same_weights", counted)
    shortcut = run_trial(config)
    assert calls["twins"] == 1  # taken at initialisation only: after a step they differ
    monkeypatch.setattr(session_eval, "same_weights", lambda a, b: False)
    full = run_trial(config)

    def results(r):
        drop = set(TIMING_FIELDS)
        return r.init_metrics, [{k: v for k, v in h.items() if k not in drop} for h in r.history]

    assert shortcut.status == full.status == "completed"
    assert results(shortcut) == results(full)
    assert "d_kl" in shortcut.init_metrics and shortcut.init_metrics["d_kl"] > 0
