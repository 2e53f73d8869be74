"""Shared pieces of the execution and dispatch tests: submit a search straight into the
tables (as the API does), read back its row, events and job (``tests.waiting`` waits for a
condition)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from search.spec import SearchSpec, planned_trials
from service.persistence import store
from service.persistence.db import engine_of, session_scope
from service.persistence.models import Job, Search, SearchEvent, SearchRun, SearchTrial
from service.persistence.settings import Settings


def new_search(
    settings: Settings, spec: SearchSpec, *, tenant: str = "acme", queue: str | None = None
) -> uuid.UUID:
    """A tenant (made once) and a queued search of ``spec`` with its job, like a POST."""
    search_id = uuid.uuid4()
    with session_scope(engine_of(settings)) as s:
        owner = store.tenant_by_name(s, tenant) or store.create_tenant(
            s, tenant, max_concurrent=50, max_trials=500
        )
        store.create_search(
            s,
            owner,
            spec=spec.model_dump(mode="json"),
            name=spec.name or f"hssl-{search_id}",
            study_name=f"hssl-{search_id}",
            planned=planned_trials(spec),
            idempotency_key=None,
            queue=queue or settings.queue,
            search_id=search_id,
        )
    return search_id


def tenant_key(settings: Settings, max_concurrent: int = 2, max_trials: int = 50) -> str:
    """A new tenant "acme" and a live API key of it."""
    with session_scope(engine_of(settings)) as s:
        tenant = store.create_tenant(
            s, "acme", max_concurrent=max_concurrent, max_trials=max_trials
        )
        key, _ = store.create_api_key(s, tenant)
    return key


def search_row(settings: Settings, search_id: uuid.UUID) -> Search:
    with session_scope(engine_of(settings)) as s:
        return s.get(Search, search_id)


def job_row(settings: Settings, search_id: uuid.UUID, shard: int = 0) -> Job:
    with session_scope(engine_of(settings)) as s:
        return s.scalar(select(Job).where(Job.search_id == search_id, Job.shard == shard))


def job_rows(settings: Settings, search_id: uuid.UUID) -> list[Job]:
    """Every shard job of the search, by shard."""
    with session_scope(engine_of(settings)) as s:
        return list(s.scalars(select(Job).where(Job.search_id == search_id).order_by(Job.shard)))


def run_rows(settings: Settings, search_id: uuid.UUID) -> list[SearchRun]:
    """The search's run claims (``search_runs``), oldest first."""
    with session_scope(engine_of(settings)) as s:
        return list(
            s.scalars(
                select(SearchRun).where(SearchRun.search_id == search_id).order_by(SearchRun.id)
            )
        )


def events(settings: Settings, search_id: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
    with session_scope(engine_of(settings)) as s:
        rows = s.scalars(
            select(SearchEvent).where(SearchEvent.search_id == search_id).order_by(SearchEvent.id)
        )
        return [(e.kind, e.data) for e in rows]


def trials(settings: Settings, search_id: uuid.UUID) -> list[SearchTrial]:
    with session_scope(engine_of(settings)) as s:
        return list(
            s.scalars(
                select(SearchTrial)
                .where(SearchTrial.search_id == search_id)
                .order_by(SearchTrial.number)
            )
        )


def cancel(settings: Settings, search_id: uuid.UUID) -> str:
    with session_scope(engine_of(settings)) as s:
        search = s.get(Search, search_id)
        return store.request_cancel(s, search.tenant_id, search_id).status
