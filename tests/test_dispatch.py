"""Dispatchers end to end: the LocalDispatcher runs a submitted search and hands an
interrupted one back for the next start; on PostgreSQL a real ``hssl worker`` process runs a
deferred search and one its maintenance re-defers from the outbox; stalled procrastinate jobs
are retried, then failed with their search."""

import asyncio
import json
import os
import signal
import subprocess
import uuid
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import update

from service.jobs.dispatcher import make_dispatcher
from service.jobs.local import LocalDispatcher
from service.jobs.tasks import ProcrastinateDispatcher, conninfo, maintain, make_app
from service.persistence.db import engine_of, session_scope
from service.persistence.models import Job, utcnow
from tests.conftest import make_settings
from tests.dispatch_helpers import (
    cancel,
    events,
    job_row,
    new_search,
    search_row,
    tenant_key,
    trials,
)
from tests.net_helpers import http
from tests.process_helpers import pg_settings, start_serve, start_worker
from tests.search_helpers import TINY_SEARCH, tiny
from tests.waiting import wait_until

FINAL = ("completed", "failed", "cancelled")


def final_status(settings, sid):
    status = search_row(settings, sid).status
    return status if status in FINAL else None


def test_make_dispatcher_picks_local_unless_postgres_without_local_workers(tmp_path):
    pg = "postgresql+psycopg://u@/db?host=/tmp"
    assert isinstance(make_dispatcher(make_settings(tmp_path)), LocalDispatcher)
    sqlite_zero = make_settings(tmp_path, local_workers=0)
    assert isinstance(make_dispatcher(sqlite_zero), LocalDispatcher)
    assert isinstance(make_dispatcher(make_settings(tmp_path, pg)), LocalDispatcher)
    remote = make_dispatcher(make_settings(tmp_path, pg, local_workers=0))
    assert isinstance(remote, ProcrastinateDispatcher)
    parsed = psycopg.conninfo.conninfo_to_dict(conninfo(pg))  # the driver part is gone
    assert conninfo(pg).startswith("postgresql://") and parsed["host"] == "/tmp"


@pytest.mark.slow
def test_local_dispatcher_runs_a_submitted_search_end_to_end(settings):
    settings = settings.model_copy(update={"heartbeat_s": 0.5})
    dispatcher = LocalDispatcher(settings, 1, poll_s=30)  # only submitted() wakes it quickly
    dispatcher.start()
    try:
        sid = new_search(settings, tiny(strategy="joint"))
        dispatcher.submitted(sid, settings.queue)
        wait_until(lambda: dispatcher.running(), timeout=10, what="the dispatcher to claim")
        status = wait_until(lambda: final_status(settings, sid), timeout=240, what="the search")
    finally:
        dispatcher.stop()
    assert status == "completed"
    job = job_row(settings, sid)
    assert job.status == "done" and job.worker.startswith("serve:") and job.attempts == 0
    assert search_row(settings, sid).recommendation is not None
    assert dispatcher.running() == {}


@pytest.mark.slow
def test_stop_interrupts_a_search_and_the_next_start_resumes_it(sqlite_database_url, tmp_path):
    settings = make_settings(tmp_path, sqlite_database_url)
    spec = tiny(strategy="joint", budget={"epochs": 200, "data_limit": 320})
    sid = new_search(settings, spec)
    first = LocalDispatcher(settings, 1, poll_s=0.2)
    first.start()
    try:
        wait_until(
            lambda: any(k == "trial.reported" for k, _ in events(settings, sid)),
            timeout=180,
            what="the first epoch report",
        )
        assert list(first.running().values()) == [sid]  # its run is in flight
    finally:
        first.stop(timeout=60)  # a bound for a hang: it returns once its runs have ended
    assert first.running() == {}  # stopped by the interrupt, not given up on after the timeout
    job = job_row(settings, sid)
    assert (job.status, job.attempts, job.worker) == ("queued", 0, None)
    assert search_row(settings, sid).status == "running"
    assert events(settings, sid)[-1][0] == "search.interrupted"
    assert trials(settings, sid) == []  # the killed run is not recorded as failed trials

    started = [k for k, _ in events(settings, sid)].count("trial.started")
    second = LocalDispatcher(settings, 1, poll_s=0.2)
    second.start()
    try:
        wait_until(  # its run starts again (no second search.running: it never stopped running)
            lambda: [k for k, _ in events(settings, sid)].count("trial.started") > started,
            timeout=30,
            what="the search to resume",
        )
        assert job_row(settings, sid).status == "running"
        cancel(settings, sid)
        status = wait_until(lambda: final_status(settings, sid), timeout=60, what="the cancel")
    finally:
        second.stop()
    assert status == "cancelled" and job_row(settings, sid).status == "done"


# ---- PostgreSQL: procrastinate -----------------------------------------------------------
def maintain_once(settings):
    async def run():
        app = make_app(settings)
        async with app.open_async():
            return await maintain(app, settings)

    return asyncio.run(run())


@pytest.mark.slow
def test_a_worker_process_runs_deferred_searches_and_the_outbox(
    pg_database_url, tmp_path, clean_env
):
    settings = pg_settings(pg_database_url, tmp_path)
    log_path = tmp_path / "worker.log"
    worker = start_worker(settings, log_path)
    dispatcher = make_dispatcher(settings)
    assert isinstance(dispatcher, ProcrastinateDispatcher)
    dispatcher.start()
    try:
        sid = new_search(settings, tiny(strategy="joint"))
        dispatcher.submitted(sid, settings.queue)
        assert job_row(settings, sid).status in ("deferred", "running", "done")
        dispatcher.submitted(sid, settings.queue)  # twice: the queueing lock keeps one job

        # a search whose defer was lost (the API died after its commit): the outbox
        lost = new_search(settings, tiny(strategy="joint", seed=1))
        with session_scope(engine_of(settings)) as s:
            s.execute(
                update(Job)
                .where(Job.search_id == lost)
                .values(created_at=utcnow() - timedelta(seconds=60))
            )
        maintain_once(settings)
        assert job_row(settings, lost).status != "queued"

        for search_id in (sid, lost):
            status = wait_until(
                lambda search_id=search_id: final_status(settings, search_id),
                timeout=300,
                what=f"search {search_id} (worker log: {log_path})",
            )
            assert status == "completed", log_path.read_text()[-3000:]
            job = job_row(settings, search_id)
            assert job.status == "done" and job.worker.startswith("procrastinate:")
        kinds = [k for k, _ in events(settings, sid)]
        assert kinds.count("search.running") == 1 and kinds[-1] == "search.completed"
    finally:
        dispatcher.stop()
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
    assert code == 0, log_path.read_text()[-3000:]


def test_maintenance_retries_stalled_jobs_then_fails_them_with_their_search(
    pg_database_url, tmp_path, clean_env
):
    settings = pg_settings(pg_database_url, tmp_path)
    sid = new_search(settings, tiny())
    dispatcher = ProcrastinateDispatcher(settings)
    dispatcher.start()
    try:
        dispatcher.submitted(sid, settings.queue)
    finally:
        dispatcher.stop()
    assert job_row(settings, sid).status == "deferred"

    def play_dead_worker(attempts):  # 'doing' with no live worker: what a kill -9 leaves
        with psycopg.connect(conninfo(settings.resolved_database_url), autocommit=True) as c:
            c.execute(
                "UPDATE procrastinate_jobs SET status = 'doing', worker_id = NULL, attempts = %s"
                " WHERE queueing_lock = %s",
                (attempts, str(sid)),
            )

    def pq_job():
        with psycopg.connect(conninfo(settings.resolved_database_url)) as c:
            return c.execute(
                "SELECT status, attempts FROM procrastinate_jobs WHERE queueing_lock = %s",
                (str(sid),),
            ).fetchone()

    play_dead_worker(0)
    assert maintain_once(settings)["retried"] == 1
    assert pq_job() == ("todo", 1)
    assert search_row(settings, sid).status == "queued"

    play_dead_worker(2)
    assert maintain_once(settings)["failed"] == 1
    assert pq_job()[0] == "failed"
    search = search_row(settings, sid)
    assert search.status == "failed" and "3 attempts" in search.error
    assert job_row(settings, sid).status == "failed"


# ---- hssl serve ---------------------------------------------------------------------------
def reports(settings, sid):
    return [k for k, _ in events(settings, sid)].count("trial.reported")


@pytest.mark.slow
def test_hssl_serve_runs_a_posted_search_through_a_crash_and_a_restart(
    sqlite_database_url, tmp_path, clean_env, reserved_port
):
    settings = make_settings(tmp_path, sqlite_database_url)
    key = tenant_key(settings)
    port, log_path = reserved_port, tmp_path / "serve.log"  # held: each restart gets it again
    base = f"http://127.0.0.1:{port}"
    body = {**TINY_SEARCH, "strategy": "joint", "budget": {**TINY_SEARCH["budget"], "epochs": 6}}

    # 1. a crash mid-run (SIGKILL, trial process included): the job is left running
    first = start_serve(settings, port, log_path)
    try:
        status, _, raw = http("POST", f"{base}/v1/searches", key, body)
        resource = json.loads(raw)
        assert status == 202 and resource["status"] in ("queued", "running")
        sid = uuid.UUID(resource["id"])
        wait_until(lambda: reports(settings, sid), timeout=180, what="a first epoch report")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    assert (job_row(settings, sid).status, job_row(settings, sid).attempts) == ("running", 0)

    # 2. the next start reconciles it (attempts 1) and runs it; SIGTERM hands it back
    seen = reports(settings, sid)
    second = start_serve(settings, port, log_path)
    try:
        wait_until(lambda: reports(settings, sid) > seen, timeout=180, what="the rerun's report")
    finally:
        second.send_signal(signal.SIGTERM)
        code = second.wait(timeout=60)
    assert code in (0, -signal.SIGTERM), log_path.read_text()[-3000:]  # uvicorn re-raises it
    job = job_row(settings, sid)
    assert (job.status, job.attempts, job.worker) == ("queued", 1, None)
    assert events(settings, sid)[-1][0] == "search.interrupted"

    # 3. the third start finishes it
    third = start_serve(settings, port, log_path)
    try:
        wait_until(
            lambda: json.loads(http("GET", f"{base}/v1/searches/{sid}", key)[2])["status"] in FINAL,
            timeout=240,
            what="the resumed search",
        )
        resource = json.loads(http("GET", f"{base}/v1/searches/{sid}", key)[2])
    finally:
        third.send_signal(signal.SIGTERM)
        third.wait(timeout=60)
    assert resource["status"] == "completed", log_path.read_text()[-3000:]
    assert resource["best"] is not None and resource["progress"]["finished"] == 3
    job = job_row(settings, sid)
    assert (job.status, job.attempts) == ("done", 1)
    kinds = [k for k, _ in events(settings, sid)]
    assert "search.requeued" in kinds and kinds.count("search.running") == 1  # resumed twice
    assert kinds.count("search.interrupted") == 1
