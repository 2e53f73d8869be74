"""The embedded queue's SQL: claims are exclusive under concurrency, stale jobs go back to
the queue and fail on the third lost attempt, start-up reconciles a dead process's jobs."""

import os
import subprocess
import sys
import threading
from datetime import timedelta

from sqlalchemy import update

from service.jobs.local import _alive
from service.persistence import jobs
from service.persistence.db import engine_of, session_scope
from service.persistence.models import Job, utcnow
from tests.dispatch_helpers import events, job_row, new_search, search_row
from tests.search_helpers import tiny


def claim(settings, worker, queue="default"):
    with session_scope(engine_of(settings)) as s:
        return jobs.claim_job(s, queue, worker)


def age_heartbeat(settings, job_id, seconds=600):
    with session_scope(engine_of(settings)) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def test_claims_are_exclusive_under_two_threads(settings):
    ids = {new_search(settings, tiny()) for _ in range(12)}
    other_queue = new_search(settings, tiny(), queue="gpu-h100")
    taken: dict[str, list] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def worker(name):
        start.wait()
        while (job := claim(settings, f"test:{name}")) is not None:
            taken[name].append(job.search_id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    a, b = taken["a"], taken["b"]
    assert len(a) + len(b) == len(ids) and set(a) | set(b) == ids and not set(a) & set(b)
    row = job_row(settings, next(iter(ids)))
    assert row.status == "running" and row.worker.startswith("test:") and row.heartbeat_at
    assert job_row(settings, other_queue).status == "queued"  # another queue's job stays
    assert claim(settings, "test:c", queue=None).search_id == other_queue  # None: any queue


def test_stale_jobs_are_requeued_and_fail_after_three_attempts(settings):
    sid = new_search(settings, tiny())
    engine = engine_of(settings)
    for attempt in (1, 2, 3):
        job = claim(settings, f"test:{attempt}")
        assert job is not None and job.search_id == sid
        with session_scope(engine) as s:
            assert jobs.heartbeat(s, job.id, job.worker)
            assert jobs.requeue_stale(s, stale_after_s=60) == ([], [])  # fresh: untouched
        age_heartbeat(settings, job.id)
        with session_scope(engine) as s:
            requeued, failed = jobs.requeue_stale(s, stale_after_s=60)
        row = job_row(settings, sid)
        assert row.attempts == attempt and row.worker is None
        with session_scope(engine) as s:  # the old worker lost it: its heartbeat says so
            assert not jobs.heartbeat(s, job.id, job.worker)
            assert not jobs.finish_job(s, job.id, "done", job.worker)
        if attempt < 3:
            assert (requeued, failed) == ([job.id], []) and row.status == "queued"
            assert search_row(settings, sid).status == "queued"
        else:
            assert (requeued, failed) == ([], [job.id]) and row.status == "failed"
    search = search_row(settings, sid)
    assert search.status == "failed" and "3 attempts" in search.error
    kinds = [k for k, _ in events(settings, sid)]
    assert kinds.count("search.requeued") == 2 and kinds[-1] == "search.failed"
    assert claim(settings, "test:4") is None


def test_reconcile_at_startup_requeues_the_jobs_of_dead_processes_only(settings):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    owners = {
        "dead": f"serve:box:{dead_pid}:0",
        "alive": f"serve:box:{os.getppid()}:0",
        "me": f"serve:box:{os.getpid()}:1",  # an earlier life of this very pid
        "elsewhere": f"serve:other-box:{dead_pid}:0",
    }
    sids = {name: new_search(settings, tiny()) for name in owners}
    for name in owners:
        assert claim(settings, owners[name]).search_id == sids[name]
    with session_scope(engine_of(settings)) as s:
        requeued, failed = jobs.reconcile_at_startup(s, "serve:box:", keep=_alive)
    assert len(requeued) == 2 and failed == []
    status = {name: job_row(settings, sid).status for name, sid in sids.items()}
    assert status == {"dead": "queued", "alive": "running", "me": "queued", "elsewhere": "running"}
    assert job_row(settings, sids["dead"]).attempts == 1


def test_finish_release_and_queue_depth(settings):
    a, b, c = (new_search(settings, tiny()) for _ in range(3))
    engine = engine_of(settings)
    with session_scope(engine) as s:
        assert jobs.queue_depth(s) == 3 and jobs.queue_depth(s, "gpu") == 0
    first = claim(settings, "test:x")
    with session_scope(engine) as s:
        assert jobs.queue_depth(s) == 2
        assert jobs.release_job(s, first.id, "test:x")  # a clean stop: back, attempts kept
    row = job_row(settings, first.search_id)
    assert (row.status, row.attempts, row.worker) == ("queued", 0, None)
    again = claim(settings, "test:y")
    assert again.id == first.id
    with session_scope(engine) as s:
        assert jobs.finish_job(s, again.id, "done", "test:y")
        assert jobs.mark_deferred(s, b) and not jobs.mark_deferred(s, a)
        assert jobs.queue_depth(s) == 2  # b deferred + c queued
    assert {job_row(settings, x).status for x in (a, b, c)} == {"done", "deferred", "queued"}
