"""Optuna storage for searches: SQLite under one data directory by default, any RDB URL
(PostgreSQL) otherwise; one study per search, its spec and settings in study attributes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.spec import SearchSpec
from search.strategy import strategy_of

INTERRUPTED = "interrupted: the process running it stopped; reconciled when the search resumed"


def sqlite_url(data_dir: str | Path) -> str:
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'optuna.sqlite3'}"


def engine_kwargs(url: str) -> dict[str, Any]:
    """The storage's SQLAlchemy engine arguments. PostgreSQL: connections checked before use,
    at most ``pool_size`` of them (no overflow: one study is driven from one thread, and
    Optuna's session is per thread, so it holds one connection at a time)."""
    if url.startswith("sqlite"):
        return {}
    return {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 0}


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """RDB storage (PostgreSQL: pooled small, see ``engine_kwargs``)."""
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage ``study`` was opened on (an ``RDBStorage`` from ``make_storage``, as given to
    ``optuna.create_study``/``load_study``).

    The one place this module reads Optuna's internals, because Optuna has no public way back
    from a ``Study`` to its storage: ``Study`` keeps it in ``_storage`` (no public property),
    and wraps an ``RDBStorage`` in ``_CachedStorage``, whose ``_backend`` is the storage itself.
    Everything done with the result is the storage's public interface (``BaseStorage``
    methods, ``RDBStorage.engine``); the cache layer only forwards the writes used here to its
    backend and re-reads unfinished trials on every read, so going round it changes nothing.
    Callers hold only the study (``bench/study.py``, ``search.context``), hence this helper
    rather than threading the storage through them."""
    storage = study._storage
    return getattr(storage, "_backend", storage)


def close_study(study: optuna.Study) -> None:
    """Release the study's database connections (a long-running server opens one per search)."""
    engine = getattr(storage_of(study), "engine", None)
    if engine is not None:
        engine.dispose()


def study_name(spec: SearchSpec) -> str:
    """The spec's name, or one derived from its content (same spec → same study)."""
    if spec.name:
        return spec.name
    digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:10]
    return f"{spec.base.name}-{spec.strategy}-{digest}"


def directions(spec: SearchSpec) -> list[str]:
    """The study's directions, as the spec's strategy declares them (each objective in its
    registered direction; the optuna strategy's pruned mode: the first objective only)."""
    return strategy_of(spec).directions(spec)


def spec_of(study: optuna.Study) -> SearchSpec | None:
    raw = study.user_attrs.get("spec")
    return SearchSpec.model_validate(raw) if raw else None


def same_spec(study: optuna.Study, spec: SearchSpec) -> bool:
    stored = spec_of(study)
    return stored is not None and json.dumps(stored.model_dump(), sort_keys=True) == json.dumps(
        spec.model_dump(), sort_keys=True
    )


def reconcile_orphans(study: optuna.Study) -> list[int]:
    """Fail trials left running or waiting by a process that died; return their numbers."""
    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    return fail_interrupted(study, orphans)


def reconcile_unit(study: optuna.Study, unit: str) -> list[int]:
    """Fail the trials left ``RUNNING`` under a claimed unit (its former owner died); return
    their numbers. Only safe while the caller holds the unit's exclusive claim."""
    orphans = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get("unit") == unit
    ]
    return fail_interrupted(study, orphans)


def fail_interrupted(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> list[int]:
    """Fail ``trials`` (their process is gone) with ``failure_reason`` = ``INTERRUPTED``, at
    once; return their numbers. Public storage calls only; the trial ids are looked up by
    number (``FrozenTrial`` keeps its id private).

    Optuna's public ways of failing a trial do not do this, hence the storage calls:
    - ``study.tell(number, state=FAIL)`` refuses a ``WAITING`` trial, cannot write the reason
      (a user attribute), and runs the sampler's ``after_trial`` for a trial its run never
      told.
    - The heartbeat (``RDBStorage(heartbeat_interval=...)`` with ``fail_stale_trials``) is
      recorded only inside ``study.optimize`` (``study.ask`` warns when it is on), and the
      strategies ask/tell or add their trials; it fails a trial a grace period after its
      last beat, where the resuming process, or the holder of the unit's exclusive claim,
      knows now that the owner is gone; and its callback gets the trial already ``FAIL``,
      when no user attribute can be written any more (``UpdateFinishedTrialError``), so the
      reason that the ranking, calibration and the service report would be lost.
    """
    if not trials:
        return []
    storage = storage_of(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in trials:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "failure_reason", INTERRUPTED)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    return [t.number for t in trials]
