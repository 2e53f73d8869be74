"""The fine-tune probe (issue 15): a short proxy fine-tune of a run's base as a search objective,
with its floor (the same fine-tune from the random-init network) and seed spread."""

import json
import math
import typing

import optuna
import pytest
import torch
from pydantic import ValidationError

from search.objectives import (
    BASE_ESTIMATORS,
    LABEL_FREE,
    METRIC_OF,
    PROBE_OBJECTIVES,
    Objective,
    metric_of,
)
from search.records import METRICS
from search.run import run_search
from search.storage import make_storage, sqlite_url
from tests.search_helpers import tiny
from training.finetune.probe import finetune_probe, probe_batch
from training.loop.session import build_session

FINETUNE = {"objectives": ["d_kl", "finetune"], "trial_overrides": {"finetune_epochs": 1}}


def test_one_objective_map_feeds_every_vocabulary():
    assert set(METRIC_OF) == set(typing.get_args(Objective))
    assert set(LABEL_FREE) | set(BASE_ESTIMATORS) | set(PROBE_OBJECTIVES) == set(METRIC_OF)
    assert not set(LABEL_FREE) & set(PROBE_OBJECTIVES)
    assert not set(BASE_ESTIMATORS) & (set(LABEL_FREE) | set(PROBE_OBJECTIVES))
    assert all(metric in METRICS for metric in METRIC_OF.values())
    assert metric_of("knn") == "knn_cls" and metric_of("knn_cls") == "knn_cls"
    with pytest.raises(ValueError, match="choose from knn, linear, finetune, d_kl"):
        metric_of("top1")


def test_probe_batch_is_even_and_at_most_the_recipes():
    assert [probe_batch(b) for b in (2, 3, 16, 17, 64, 500)] == [2, 2, 16, 16, 64, 64]


def test_the_probe_fine_tunes_a_copy_and_is_deterministic():
    config = tiny().trial_config((), 0)
    s = build_session(config, None)
    model = s.teacher.base.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = dict(runtime=s.runtime, epochs=1, batch_size=config.batch_size, seed=3)
    first = finetune_probe(model, config.base, s.train_set, s.heldout_set, **kw)
    again = finetune_probe(model, config.base, s.train_set, s.heldout_set, **kw)
    assert set(first) == {"finetune"} and 0.0 <= first["finetune"] <= 1.0
    assert first == again  # same seed, same batches, same weights: the same accuracy
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the run's base is untouched


def test_the_spec_turns_the_probe_on_only_when_an_objective_reads_it():
    assert not tiny().trial_config((), 0).finetune_probe
    assert tiny(strategy="independent", **FINETUNE).trial_config((), 0).finetune_probe
    with pytest.raises(ValidationError, match="joint strategy ranks by discrepancy"):
        tiny(strategy="joint", objectives=["d_kl", "finetune"])


def _study(tmp_path, outcome) -> optuna.Study:
    return optuna.load_study(study_name=outcome.study, storage=make_storage(sqlite_url(tmp_path)))


@pytest.mark.slow
def test_finetune_objective_in_a_tiny_independent_search(tmp_path):
    one_head = {"heads": ["mlp:depth=1"]}
    spec = tiny(strategy="independent", space=one_head, budget={"seeds": 2}, **FINETUNE)
    outcome = run_search(spec, tmp_path, progress=False, isolate=False)
    assert outcome.status == "completed"
    study = _study(tmp_path, outcome)
    assert study.metric_names == ["d_kl", "finetune"]
    trials = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert len(trials) == 2  # one head x two seeds
    for t in trials:  # the objective value is the probe, and its floor is recorded beside it
        final, init = t.user_attrs["final"], t.user_attrs["init"]
        assert t.values == [final["d_kl"], final["finetune"]]
        assert 0.0 <= final["finetune"] <= 1.0 and 0.0 <= init["finetune"] <= 1.0
    ranking = json.loads(outcome.files["ranking"].read_text())
    head = ranking["heads"][0]
    assert ranking["objectives"] == ["d_kl", "finetune"]
    floors = [t.user_attrs["init"]["finetune"] for t in trials]
    assert head["floor"]["finetune"] == pytest.approx(sum(floors) / 2)
    assert math.isfinite(head["sd"]["finetune"])  # its seed spread
    gains = [t.user_attrs["final"]["finetune"] - t.user_attrs["init"]["finetune"] for t in trials]
    assert head["gain"]["finetune"] == pytest.approx(sum(gains) / 2)
    assert "finetune (se, floor, gain)" in outcome.table


@pytest.mark.slow
def test_finetune_objective_in_a_tiny_optuna_search(tmp_path):
    spec = tiny(strategy="optuna", budget={"trials": 2}, **FINETUNE)
    outcome = run_search(spec, tmp_path, progress=False, isolate=False)
    assert outcome.status == "completed"
    trials = [t for t in _study(tmp_path, outcome).get_trials() if t.state.name == "COMPLETE"]
    assert len(trials) == 2
    assert all(t.values[1] == t.user_attrs["final"]["finetune"] for t in trials)
    assert all("finetune" in t.user_attrs["init"] for t in trials)
