"""One shard job's life, the same under both dispatchers: its row is held ``running`` with a
heartbeat while the search's shard executes; then it is released back to ``queued`` (the
worker is stopping: another resumes it) or finished ``done``/``failed``.

:func:`run_held_job` is that life for a row already claimed by ``worker``
(``LocalDispatcher`` claims rows itself; a procrastinate task marks its row running first).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from service.jobs.execute import Flag, execute_search, one_line
from service.jobs.shards import Announce
from service.persistence import jobs
from service.persistence.db import engine_of, session_scope
from service.persistence.settings import Settings
from service.statuses import JobStatus, Outcome

log = logging.getLogger(__name__)

Execute = Callable[..., str]  # execute_search's signature (service.jobs.child: in a child)


class AnyOf:
    """A flag set when any of its (non-None) flags is set."""

    def __init__(self, *flags: Flag | None) -> None:
        self.flags = [f for f in flags if f is not None]

    def is_set(self) -> bool:
        return any(f.is_set() for f in self.flags)


class Heartbeat:
    """Refreshes a running job's heartbeat every ``settings.heartbeat_s`` from a thread;
    ``lost`` is set when the row is no longer this worker's (requeued as stale elsewhere),
    which interrupts the search so two workers never keep running one job."""

    def __init__(self, settings: Settings, job_id: int, worker: str) -> None:
        self.settings, self.job_id, self.worker = settings, job_id, worker
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        engine = engine_of(self.settings)
        while not self._stop.wait(self.settings.heartbeat_s):
            try:
                with session_scope(engine) as s:
                    ours = jobs.heartbeat(s, self.job_id, self.worker)
            except Exception as exc:  # the database blinked; the stale limit is far away
                log.warning("job %s: heartbeat failed: %s", self.job_id, one_line(exc))
                continue
            if not ours:
                log.warning("job %s is no longer %s's; interrupting it", self.job_id, self.worker)
                self.lost.set()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def run_held_job(
    settings: Settings,
    job: jobs.HeldJob,
    *,
    interrupt: Flag | None,
    announce: Announce | None,
    memory_limit_mb: int | None,
    execute: Execute = execute_search,
) -> str:
    """Execute the job's shard with a heartbeat (``execute``: in this process by default),
    then record how it ended; the outcome."""
    beat = Heartbeat(settings, job.id, job.worker)
    try:
        outcome = execute(
            settings,
            job.search_id,
            interrupt=AnyOf(interrupt, beat.lost),
            job=job,
            announce=announce,
            memory_limit_mb=memory_limit_mb,
        )
    finally:
        beat.stop()
    record_outcome(settings, job, outcome)
    log.info("search %s shard %s: %s", job.search_id, job.shard, outcome)
    return outcome


def record_outcome(settings: Settings, job: jobs.HeldJob, outcome: str) -> None:
    """Interrupted: the row goes back to the queue; otherwise it is finished. A database
    failure here leaves it running, and the stale sweep takes it back."""
    try:
        with session_scope(engine_of(settings)) as s:
            if outcome == Outcome.INTERRUPTED:
                jobs.release_job(s, job.id, job.worker)
            else:
                done = JobStatus.FAILED if outcome == Outcome.FAILED else JobStatus.DONE
                jobs.finish_job(s, job.id, done, job.worker)
    except Exception as exc:
        log.warning("job %s: could not record %s: %s", job.id, outcome, one_line(exc))
