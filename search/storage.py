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


def close_study(study: optuna.Study) -> None:
    """Release the study's database connections (a long-running server opens one per search)."""
    storage = getattr(study._storage, "_backend", study._storage)
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


def study_name(spec: SearchSpec) -> str:
    """The spec's name, or one derived from its content (same spec → same study)."""
    if spec.name:
        return spec.name
    digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:10]
    return f"{spec.base.name}-{spec.strategy}-{digest}"


def directions(spec: SearchSpec) -> list[str]:
    """Every objective is maximised (accuracy, and discrepancy per the paper's claim)."""
    if spec.strategy == "optuna" and spec.optuna_mode == "pruned":
        return ["maximize"]
    return ["maximize"] * len(spec.objectives)


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
    storage = study._storage
    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    for trial in orphans:
        storage.set_trial_user_attr(trial._trial_id, "failure_reason", INTERRUPTED)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return [t.number for t in orphans]


def reconcile_unit(study: optuna.Study, unit: str) -> list[int]:
    """Fail the trials left ``RUNNING`` under a claimed unit (its former owner died); return
    their numbers. Only safe while the caller holds the unit's exclusive claim."""
    storage = study._storage
    orphans = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get("unit") == unit
    ]
    for trial in orphans:
        storage.set_trial_user_attr(trial._trial_id, "failure_reason", INTERRUPTED)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return [t.number for t in orphans]
