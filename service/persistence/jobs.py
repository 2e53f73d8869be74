"""SQL on our ``jobs`` table, the embedded queue (the only SQL on it outside ``store``).

A search runs as one or more *shard* jobs (``shard`` 0 is created with the search; the
running search adds the others once it knows how many of its runs may go at once: see
``add_shards``). Every shard joins the search's study and runs the runs it can claim
(``service.persistence.runs``); the last shard to finish writes the ranking (``finish_shard``).

A job row follows one shard: ``queued`` → ``running`` (claimed by a worker, which refreshes
``heartbeat_at``) → ``done`` or ``failed``. On PostgreSQL with procrastinate workers the API
marks it ``deferred`` once procrastinate holds the job; a row still ``queued`` after that is
the outbox the worker's periodic task re-defers.

A job whose worker died is found two ways: its heartbeat goes stale (``requeue_stale``), or
the process that owned it starts again (``reconcile_at_startup``). Either puts it back to
``queued`` with ``attempts + 1``; the third lost attempt fails the job and its search.

Every function takes a Session opened by ``service.persistence.db.session_scope``: one call,
one step of the caller's transaction. ``claim_job`` should be the first statement of its transaction
(on SQLite a transaction that read first may not upgrade to a write).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.persistence import store
from service.persistence.models import Job, Search, SearchRun, utcnow
from service.statuses import ACTIVE, CLOSED, FINAL, WAITING, JobStatus, RunStatus, SearchStatus

MAX_ATTEMPTS = 3
NO_SYNC = {"synchronize_session": False}


@dataclass(frozen=True)
class HeldJob:
    """A ``jobs`` row a worker holds ``running``: one shard of one search (what ``claim_job``
    returns; a procrastinate task builds it once it has marked its row running). The one
    record of a held job, from the claim to the shard's claims on its runs."""

    id: int
    search_id: uuid.UUID
    worker: str
    shard: int = 0
    queue: str = ""
    attempts: int = 0


def _is_postgres(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


def claim_job(s: Session, queue: str | None, worker_id: str) -> HeldJob | None:
    """Take the oldest ``queued`` job of ``queue`` (None: any queue) for ``worker_id``.

    One statement: ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)`` on
    PostgreSQL, so concurrent claimers never wait on each other nor take the same row; on
    SQLite the single UPDATE runs under the database's write lock and re-checks the status.
    """
    pick = select(Job.id).where(Job.status == JobStatus.QUEUED)
    if queue is not None:
        pick = pick.where(Job.queue == queue)
    pick = pick.order_by(Job.id).limit(1)
    if _is_postgres(s):
        pick = pick.with_for_update(skip_locked=True)
    now = utcnow()
    stmt = (
        update(Job)
        .where(Job.id == pick.scalar_subquery(), Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.RUNNING, worker=worker_id, heartbeat_at=now)
        .returning(Job.id, Job.search_id, Job.queue, Job.attempts, Job.shard)
        .execution_options(**NO_SYNC)
    )
    row = s.execute(stmt).first()
    if row is None:
        return None
    return HeldJob(
        row.id, row.search_id, worker_id, shard=row.shard, queue=row.queue, attempts=row.attempts
    )


def heartbeat(s: Session, job_id: int, worker_id: str) -> bool:
    """Refresh a running job's heartbeat; False if the job is no longer this worker's
    (it was requeued as stale, or finished): the caller should stop working on it."""
    result = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.worker == worker_id)
        .values(heartbeat_at=utcnow())
        .execution_options(**NO_SYNC)
    )
    return result.rowcount == 1


def finish_job(s: Session, job_id: int, status: str, worker_id: str | None = None) -> bool:
    """Mark a job ``done`` or ``failed``; with ``worker_id``, only while that worker owns it."""
    if status not in CLOSED:
        raise ValueError(f"a job finishes done or failed, not {status!r}")
    stmt = update(Job).where(Job.id == job_id).values(status=status, heartbeat_at=utcnow())
    if worker_id is not None:
        stmt = stmt.where(Job.worker == worker_id, Job.status == JobStatus.RUNNING)
    return s.execute(stmt.execution_options(**NO_SYNC)).rowcount == 1


def release_job(s: Session, job_id: int, worker_id: str) -> bool:
    """Put a job its worker stopped cleanly (shutdown) back to ``queued``, attempts unchanged."""
    result = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker_id, Job.status == JobStatus.RUNNING)
        .values(status=JobStatus.QUEUED, worker=None, heartbeat_at=None)
        .execution_options(**NO_SYNC)
    )
    return result.rowcount == 1


def requeue_stale(s: Session, stale_after_s: float) -> tuple[list[int], list[int]]:
    """Jobs ``running`` without a heartbeat for ``stale_after_s`` go back to ``queued``
    (attempts + 1), or fail with their search on the third lost attempt.
    Returns (requeued ids, failed ids)."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    query = select(Job).where(
        Job.status == JobStatus.RUNNING, (Job.heartbeat_at.is_(None)) | (Job.heartbeat_at < cutoff)
    )
    reason = f"its worker sent no heartbeat for over {stale_after_s:g} s"
    return _lose(s, _locked(s, query), reason)


def reconcile_at_startup(
    s: Session, worker_prefix: str, keep: Callable[[str], bool] | None = None
) -> tuple[list[int], list[int]]:
    """Jobs left ``running`` by an earlier process whose worker ids start with
    ``worker_prefix`` (e.g. ``serve:<host>:``), except those ``keep(worker)`` says are still
    alive, go back to ``queued`` (attempts + 1; the third fails). Returns (requeued, failed)."""
    query = select(Job).where(Job.status == JobStatus.RUNNING, Job.worker.startswith(worker_prefix))
    jobs = [j for j in _locked(s, query) if keep is None or not keep(j.worker or "")]
    return _lose(s, jobs, "the process running it stopped")


def _locked(s: Session, query) -> list[Job]:
    if _is_postgres(s):
        query = query.with_for_update(skip_locked=True)
    return list(s.scalars(query.order_by(Job.id)))


def _lose(s: Session, jobs: list[Job], reason: str) -> tuple[list[int], list[int]]:
    requeued, failed = [], []
    for job in jobs:
        job.attempts += 1
        job.worker, job.heartbeat_at = None, None
        search = s.get(Search, job.search_id)
        if job.attempts >= MAX_ATTEMPTS:
            job.status = JobStatus.FAILED
            failed.append(job.id)
            if search is not None and search.status not in FINAL:
                store.set_status(
                    s,
                    search,
                    SearchStatus.FAILED,
                    f"gave up after {job.attempts} attempts: {reason}",
                )
        else:
            job.status = JobStatus.QUEUED
            requeued.append(job.id)
            if search is not None:
                store.add_event(
                    s, search.id, "search.requeued", {"attempt": job.attempts, "reason": reason}
                )
    s.flush()
    return requeued, failed


def queue_depth(s: Session, queue: str | None = None) -> int:
    """Jobs waiting for a worker (queued or deferred) whose search is still active."""
    query = (
        select(func.count())
        .select_from(Job)
        .join(Search, Search.id == Job.search_id)
        .where(Job.status.in_(WAITING), Search.status.in_(ACTIVE))
    )
    if queue is not None:
        query = query.where(Job.queue == queue)
    return s.scalar(query) or 0


# ---- shards ------------------------------------------------------------------------------
def add_shards(s: Session, search_id: uuid.UUID, total: int) -> list[tuple[int, str]]:
    """Make the search ``total`` shards (adds the missing ones, ``queued``); returns the
    (shard, queue) added. Idempotent: a shard that exists is never added twice."""
    rows = s.execute(select(Job.shard, Job.queue).where(Job.search_id == search_id)).all()
    have = {r.shard for r in rows}
    queue = rows[0].queue if rows else "default"
    added = [(n, queue) for n in range(total) if n not in have]
    for shard, q in added:
        s.add(Job(search_id=search_id, queue=q, shard=shard))
    s.flush()
    return added


def finish_shard(s: Session, search_id: uuid.UUID, job_id: int, nothing_left: bool) -> bool:
    """A shard ran out of work: is it the last one? Under the search's row lock (a no-op
    write, so shards finishing together take turns on SQLite too): with ``nothing_left``
    (every run is claimed or done) the queued siblings that hold no claim are closed (they
    would find nothing to do); then, if no sibling is still waiting or running, this shard
    is the last: its job stays ``running`` and it must write the results (a crash there
    leaves the job to be retried, which finishes again). Otherwise its job is ``done``."""
    s.execute(
        update(Search)
        .where(Search.id == search_id)
        .values(status=Search.status)
        .execution_options(**NO_SYNC)
    )
    siblings = (Job.search_id == search_id, Job.id != job_id)
    if nothing_left:
        holds_claim = (
            select(SearchRun.id)
            .where(SearchRun.job_id == Job.id, SearchRun.status == RunStatus.RUNNING)
            .exists()
        )
        s.execute(
            update(Job)
            .where(*siblings, Job.status.in_(WAITING), ~holds_claim)
            .values(status=JobStatus.DONE, heartbeat_at=utcnow())
            .execution_options(**NO_SYNC)
        )
    active = s.scalar(
        select(func.count())
        .select_from(Job)
        .where(*siblings, Job.status.in_((*WAITING, JobStatus.RUNNING)))
    )
    if active:
        finish_job(s, job_id, JobStatus.DONE)
        return False
    return True


# ---- procrastinate dispatch (PostgreSQL workers) ----------------------------------------
def job_of_search(s: Session, search_id: uuid.UUID, shard: int = 0) -> Job | None:
    return s.scalar(select(Job).where(Job.search_id == search_id, Job.shard == shard))


def mark_deferred(s: Session, search_id: uuid.UUID, shard: int = 0) -> bool:
    """procrastinate holds the job now; only a still-``queued`` row changes (a worker may
    already have started it)."""
    result = s.execute(
        update(Job)
        .where(Job.search_id == search_id, Job.shard == shard, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.DEFERRED)
        .execution_options(**NO_SYNC)
    )
    return result.rowcount > 0


def start_search_job(
    s: Session, search_id: uuid.UUID, worker_id: str, shard: int = 0
) -> int | None:
    """A procrastinate worker took a shard: its row is ``running`` under ``worker_id``.
    None if there is no such row or it is already closed (``done``/``failed``)."""
    job = job_of_search(s, search_id, shard)
    if job is None or job.status in CLOSED:
        return None
    job.status, job.worker, job.heartbeat_at = JobStatus.RUNNING, worker_id, utcnow()
    s.flush()
    return job.id


def outbox(s: Session, older_than_s: float) -> list[tuple[uuid.UUID, int, str]]:
    """(search id, shard, queue) of jobs still ``queued`` after ``older_than_s`` whose search
    is active: their defer was lost (the API died after commit, or procrastinate was down).
    Jobs of searches already final are closed here."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    rows = s.execute(
        select(Job, Search.status)
        .join(Search, Search.id == Job.search_id)
        .where(Job.status == JobStatus.QUEUED, Job.created_at < cutoff)
        .order_by(Job.id)
    ).all()
    waiting = []
    for job, status in rows:
        if status in FINAL:
            job.status = JobStatus.DONE
        else:
            waiting.append((job.search_id, job.shard, job.queue))
    s.flush()
    return waiting


def fail_search_job(s: Session, search_id: uuid.UUID, reason: str, shard: int = 0) -> None:
    """A job procrastinate gave up on: our row and the search fail with ``reason``."""
    job = job_of_search(s, search_id, shard)
    if job is not None:
        job.status = JobStatus.FAILED
    search = s.get(Search, search_id)
    if search is not None and search.status not in FINAL:
        store.set_status(s, search, SearchStatus.FAILED, reason)
