"""Fan-out: one search's runs spread over several worker processes (procrastinate on a real
PostgreSQL) and over the slots of one embedded dispatcher (SQLite). Each run executes once,
the ranking is written once by the last shard, cancel reaches every running run, and a
worker killed with SIGKILL loses only its own run."""

from __future__ import annotations

import itertools
import os
import signal
import uuid
from collections import Counter

import pytest

from search.storage import INTERRUPTED
from service.jobs.local import LocalDispatcher
from service.jobs.tasks import ProcrastinateDispatcher
from service.persistence import reads
from service.persistence.db import engine_of
from service.persistence.settings import Settings
from tests.conftest import make_settings
from tests.dispatch_helpers import (
    cancel,
    events,
    job_rows,
    new_search,
    run_rows,
    search_row,
    trials,
)
from tests.process_helpers import alive, pg_settings, start_worker, trial_processes
from tests.search_helpers import tiny
from tests.waiting import wait_until

pytestmark = pytest.mark.slow
FINAL = ("completed", "failed", "cancelled")
HEADS = [h.label() for h in tiny().space.candidates()]


def final_status(settings: Settings, sid: uuid.UUID) -> str | None:
    status = search_row(settings, sid).status
    return status if status in FINAL else None


def running_jobs(settings: Settings, sid: uuid.UUID) -> set[int]:
    """Jobs holding a running claim now."""
    running = {j.id for j in job_rows(settings, sid) if j.status == "running"}
    return {r.job_id for r in run_rows(settings, sid) if r.status == "running"} & running


def reports(settings: Settings, sid: uuid.UUID) -> int:
    """Distinct runs that reported an epoch."""
    return len({d["run"] for k, d in events(settings, sid) if k == "trial.reported"})


def training_now(settings: Settings, sid: uuid.UUID) -> int:
    """Runs claimed by a running shard that have reported an epoch."""
    jobs = running_jobs(settings, sid)
    units = [r.unit for r in run_rows(settings, sid) if r.status == "running" and r.job_id in jobs]
    names = {"{}-{}".format(*u.split(":")[1:]) for u in units}  # independent:<label>:s<seed>
    reported = {d["run"] for k, d in events(settings, sid) if k == "trial.reported"}
    return len(names & reported)


def overlapping(rows) -> bool:
    """Did two claimed runs execute at the same time?"""
    spans = sorted((r.started_at, r.finished_at) for r in rows if r.finished_at)
    return any(b[0] < a[1] for a, b in itertools.pairwise(spans))


def assert_once(settings: Settings, sid: uuid.UUID, seeds: int) -> None:
    """One COMPLETE trial per (head, seed), one ranking of every head, written once."""
    search = search_row(settings, sid)
    done = Counter((t.label, t.seed) for t in trials(settings, sid) if t.state == "COMPLETE")
    assert set(done) == {(h, s) for h in HEADS for s in range(seeds)}, done
    assert set(done.values()) == {1}, done
    assert sorted(h["label"] for h in search.ranking["heads"]) == sorted(HEADS)
    assert all(h["n"] == seeds for h in search.ranking["heads"]), search.ranking
    kinds = [k for k, _ in events(settings, sid)]
    assert kinds.count("search.completed") == 1 and kinds.count("search.running") == 1
    assert all(r.status == "done" for r in run_rows(settings, sid))


def stop(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture
def two_workers(pg_database_url, tmp_path, clean_env):
    settings = pg_settings(pg_database_url, tmp_path)
    log_path = tmp_path / "workers.log"
    procs = [start_worker(settings, log_path) for _ in range(2)]
    dispatcher = ProcrastinateDispatcher(settings)
    dispatcher.start()
    yield settings, procs, dispatcher, log_path
    dispatcher.stop()
    for proc in procs:
        if proc.poll() is None:
            stop(proc)


def test_a_search_spread_over_two_workers_runs_each_run_once_with_one_ranking(two_workers):
    settings, procs, dispatcher, log_path = two_workers
    sid = new_search(settings, tiny(strategy="independent", budget={"seeds": 2}))
    dispatcher.submitted(sid, settings.queue)
    status = wait_until(lambda: final_status(settings, sid), timeout=600, what=str(log_path))
    assert status == "completed", log_path.read_text()[-3000:]
    assert_once(settings, sid, seeds=2)
    shards = job_rows(settings, sid)
    assert len(shards) == len(HEADS) * 2  # one shard per (candidate, seed)
    assert all(j.status == "done" for j in shards)
    pids = {j.worker.split(":")[2] for j in shards if j.worker}
    assert pids == {str(p.pid) for p in procs}, "both workers ran shards of the search"
    assert overlapping(run_rows(settings, sid)), "two runs trained at the same time"


def test_cancel_reaches_the_runs_of_every_worker(two_workers):
    settings, procs, dispatcher, _log_path = two_workers
    sid = new_search(settings, tiny(strategy="independent", budget={"epochs": 40}))
    dispatcher.submitted(sid, settings.queue)
    wait_until(lambda: len(running_jobs(settings, sid)) == 2, 240, what="two runs at once")
    wait_until(lambda: reports(settings, sid) >= 2, 240, what="both runs training")
    trials_now = trial_processes(procs[0].pid) + trial_processes(procs[1].pid)
    assert len(trials_now) == 2, trials_now
    row = search_row(settings, sid)
    status = reads.search_status(engine_of(settings), row.tenant_id, sid)
    assert (status.running, status.planned) == (2, len(HEADS))  # what GET /v1/searches/{id} says
    cancel(settings, sid)
    status = wait_until(lambda: final_status(settings, sid), timeout=60, what="the cancel")
    assert status == "cancelled"
    wait_until(lambda: not any(alive(p) for p in trials_now), 15, what="trials to stop")
    kinds = [k for k, _ in events(settings, sid)]
    assert kinds.count("search.cancelled") == 1


def test_a_worker_killed_mid_run_loses_only_its_run(two_workers):
    settings, procs, dispatcher, log_path = two_workers
    sid = new_search(settings, tiny(strategy="independent", budget={"epochs": 6}))
    dispatcher.submitted(sid, settings.queue)
    # both runs training (each reported an epoch), so the victim's run has a RUNNING trial; a
    # shard killed between its claim and its trial would leave nothing to reconcile
    wait_until(lambda: training_now(settings, sid) == 2, 240, what="two runs training at once")
    victim, survivor = procs
    killed_job = next(  # the victim's shard running now (it may have finished others before)
        j
        for j in job_rows(settings, sid)
        if j.status == "running" and j.worker and j.worker.split(":")[2] == str(victim.pid)
    )
    killed_unit = next(
        r.unit
        for r in run_rows(settings, sid)
        if r.job_id == killed_job.id and r.status == "running"
    )
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    status = wait_until(lambda: final_status(settings, sid), timeout=600, what=str(log_path))
    assert status == "completed", log_path.read_text()[-3000:]
    assert survivor.poll() is None, "the other worker carried on"
    failed = [t for t in trials(settings, sid) if t.state == "FAIL"]
    assert [t.attrs["failure_reason"] for t in failed] == [INTERRUPTED]
    assert failed[0].attrs["unit"] == killed_unit  # only the killed worker's run was retried
    assert_once(settings, sid, seeds=1)


def test_slots_of_one_embedded_dispatcher_run_a_search_side_by_side(
    sqlite_database_url, tmp_path, clean_env
):
    settings = make_settings(tmp_path, sqlite_database_url, local_workers=2, heartbeat_s=1)
    sid = new_search(settings, tiny(strategy="independent", budget={"seeds": 1, "epochs": 2}))
    dispatcher = LocalDispatcher(settings, 2, poll_s=0.5)
    dispatcher.start()
    try:
        dispatcher.submitted(sid, settings.queue)
        status = wait_until(lambda: final_status(settings, sid), timeout=600, what="the search")
    finally:
        dispatcher.stop()
    assert status == "completed"
    assert_once(settings, sid, seeds=1)
    workers = {j.worker for j in job_rows(settings, sid) if j.worker}
    assert len(workers) == 2, workers  # both slots took shards
    assert overlapping(run_rows(settings, sid))
