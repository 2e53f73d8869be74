"""The search's Optuna storage helpers on SQLite: orphaned trials are failed as interrupted
(with the reason the ranking and the service report), only a claimed unit's own, and a closed
study gives its connections back."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from search.storage import (
    INTERRUPTED,
    close_study,
    make_storage,
    reconcile_orphans,
    reconcile_unit,
    sqlite_url,
    storage_of,
)


def _study(tmp_path, name: str = "s") -> optuna.Study:
    return optuna.create_study(
        storage=make_storage(sqlite_url(tmp_path)), study_name=name, directions=["maximize"]
    )


def _running(study: optuna.Study, **attrs) -> int:
    trial = study.ask()
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return trial.number


def test_orphans_running_or_waiting_are_failed_as_interrupted_and_the_rest_kept(tmp_path):
    study = _study(tmp_path)
    done = study.ask()
    study.tell(done, 1.0)
    running = _running(study, label="mlp-d1", seed=0)
    study.enqueue_trial({}, user_attrs={"label": "queued"})  # WAITING
    other = _study(tmp_path, "other")  # a study beside it keeps its running trial
    _running(other)
    assert [t.state for t in study.get_trials()] == [
        TrialState.COMPLETE,
        TrialState.RUNNING,
        TrialState.WAITING,
    ]

    assert reconcile_orphans(study) == [running, 2]
    trials = study.get_trials()  # through the study's own (cached) storage
    again = optuna.load_study(study_name="s", storage=sqlite_url(tmp_path)).get_trials()
    for seen in (trials, again):
        assert [t.state for t in seen] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
        assert [t.user_attrs.get("failure_reason") for t in seen] == [
            None,
            INTERRUPTED,
            INTERRUPTED,
        ]
        assert seen[1].user_attrs["label"] == "mlp-d1" and seen[1].user_attrs["seed"] == 0
        assert seen[0].values == [1.0]
    assert [t.state for t in other.get_trials()] == [TrialState.RUNNING]
    assert reconcile_orphans(study) == []


def test_a_unit_reconciles_only_its_own_running_trials(tmp_path):
    study = _study(tmp_path)
    mine = _running(study, unit="independent/mlp/0")
    theirs = _running(study, unit="independent/pool/0")
    _running(study)  # no unit: not a shard's
    study.get_trials()  # the cache holds all three as running

    assert reconcile_unit(study, "independent/mlp/0") == [mine]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[mine] == TrialState.FAIL and states[theirs] == TrialState.RUNNING
    assert study.trials[mine].user_attrs["failure_reason"] == INTERRUPTED
    assert reconcile_unit(study, "independent/mlp/0") == []
    assert reconcile_unit(study, "nobody") == []


def test_close_study_returns_its_connections_and_the_study_still_reads(tmp_path):
    study = _study(tmp_path)
    _running(study)
    engine = storage_of(study).engine
    assert engine.pool.checkedin() >= 1
    close_study(study)
    assert engine.pool.checkedin() == 0
    assert len(study.get_trials()) == 1  # a later read opens a connection again
