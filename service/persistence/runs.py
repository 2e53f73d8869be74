"""SQL on ``search_runs``: the claims that let several shard jobs share one search.

A shard claims a run before it starts it (``claim_run``); the claim names the shard's job. A
run is never executed twice at once: a claim held by a job that is ``running`` is refused to
everyone else. A claim whose job is no longer running (its worker died and the job was
requeued, or it was released on shutdown) may be taken over — by the same job's next attempt
or by any other shard — and the run resumes from its checkpoint. A finished run is ``done``
and never claimed again. A tenant's ``max_concurrent_runs`` bounds its claims held by running
jobs, over all its searches.

Every function takes a Session from ``service.persistence.db.session_scope`` and is one step of the
caller's transaction. ``claim_run`` starts with a write (on the tenant row) so that, on SQLite
as on PostgreSQL, concurrent claimers of one tenant take turns instead of all passing the cap.
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.persistence.models import Job, Search, SearchRun, Tenant, utcnow
from service.statuses import Claim, JobStatus, RunStatus

NO_SYNC = {"synchronize_session": False}


def claim_run(s: Session, search_id: uuid.UUID, unit: str, weight: int, job_id: int) -> Claim:
    """Claim ``unit`` of the search for job ``job_id`` (see the module docstring). A unique
    violation raised by a concurrent insert means another shard took it (TAKEN). A claim is
    never taken from a job still ``running`` even if its heartbeat looks stale: the job is
    first put back to the queue (stale sweep, procrastinate's retry), so its own process, if
    it still lives, learns it lost the job and stops."""
    tenant_id = s.scalar(select(Search.tenant_id).where(Search.id == search_id))
    s.execute(  # a no-op write: concurrent claimers of this tenant queue here
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(max_concurrent_runs=Tenant.max_concurrent_runs)
        .execution_options(**NO_SYNC)
    )
    row = s.scalar(
        select(SearchRun).where(SearchRun.search_id == search_id, SearchRun.unit == unit)
    )
    if row is not None and row.status == RunStatus.DONE:
        return Claim.DONE
    if row is not None and row.job_id != job_id and _job_running(s, row.job_id):
        return Claim.TAKEN
    if row is None or row.job_id != job_id:  # a new claim (or one taken over) counts to the cap
        cap = s.scalar(select(Tenant.max_concurrent_runs).where(Tenant.id == tenant_id))
        if running_runs_of_tenant(s, tenant_id) >= (cap or 1):
            return Claim.CAPPED
    if row is None:
        s.add(SearchRun(search_id=search_id, unit=unit, weight=weight, job_id=job_id))
    else:
        row.job_id, row.started_at = job_id, utcnow()
    s.flush()
    return Claim.CLAIMED


def finish_run(s: Session, search_id: uuid.UUID, unit: str, job_id: int) -> bool:
    """Mark a claimed run ``done`` (only while ``job_id`` holds it)."""
    result = s.execute(
        update(SearchRun)
        .where(
            SearchRun.search_id == search_id,
            SearchRun.unit == unit,
            SearchRun.job_id == job_id,
            SearchRun.status == RunStatus.RUNNING,
        )
        .values(status=RunStatus.DONE, finished_at=utcnow())
        .execution_options(**NO_SYNC)
    )
    return result.rowcount == 1


def running_runs_of_tenant(s: Session, tenant_id: uuid.UUID) -> int:
    return (
        s.scalar(
            select(func.count())
            .select_from(SearchRun)
            .join(Search, Search.id == SearchRun.search_id)
            .join(Job, Job.id == SearchRun.job_id)
            .where(
                Search.tenant_id == tenant_id,
                SearchRun.status == RunStatus.RUNNING,
                Job.status == JobStatus.RUNNING,
            )
        )
        or 0
    )


def progress(s: Session, search_id: uuid.UUID) -> tuple[int, int]:
    """(running, finished) planned trials of a search: the weights of its claims held by a
    running job, and of its finished claims."""
    rows = s.execute(
        select(SearchRun.status, Job.status, func.sum(SearchRun.weight))
        .join(Job, Job.id == SearchRun.job_id)
        .where(SearchRun.search_id == search_id)
        .group_by(SearchRun.status, Job.status)
    ).all()
    running = sum(
        w or 0 for run, job, w in rows if run == RunStatus.RUNNING and job == JobStatus.RUNNING
    )
    finished = sum(w or 0 for run, _job, w in rows if run == RunStatus.DONE)
    return running, finished


def _job_running(s: Session, job_id: int) -> bool:
    return s.scalar(select(Job.status).where(Job.id == job_id)) == JobStatus.RUNNING
