"""Faults injected into the real processes on a real PostgreSQL: a worker killed with SIGKILL
mid-trial, the API process killed and restarted while an SSE client follows the search, and
PostgreSQL itself restarted mid-search. Each search must complete with every run counted once.
(A SIGKILLed ``hssl serve`` on the embedded default, a cancel, a NaN loss and a killed trial
process are in test_dispatch, test_execute and test_search_isolation.)"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid

import httpx
import pytest

from search.storage import INTERRUPTED
from service.cli.client import FINAL_EVENTS, parse_sse
from service.jobs.tasks import ProcrastinateDispatcher
from service.persistence.db import engine_of
from service.persistence.migrate import migrate
from service.persistence.settings import Settings
from tests.dispatch_helpers import events, new_search, search_row, tenant_key, trials
from tests.pg import Cluster
from tests.process_helpers import alive, children, pg_settings, start_serve, start_worker
from tests.search_helpers import TINY_SEARCH, tiny
from tests.waiting import wait_until

pytestmark = pytest.mark.slow
FINAL = ("completed", "failed", "cancelled")
LABELS = [head.label() for head in tiny().space.candidates()]


def reports(settings: Settings, sid: uuid.UUID) -> int:
    return [k for k, _ in events(settings, sid)].count("trial.reported")


def final_status(settings: Settings, sid: uuid.UUID) -> str | None:
    status = search_row(settings, sid).status
    return status if status in FINAL else None


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def assert_each_run_counted_once(settings: Settings, sid: uuid.UUID, seeds: int = 1) -> None:
    """The ranking holds every head once with all its seeds and no failure; the table of
    trials holds one COMPLETE trial per (head, seed)."""
    search = search_row(settings, sid)
    heads = {h["label"]: h for h in search.ranking["heads"]}
    assert len(heads) == len(search.ranking["heads"]) == len(LABELS), search.ranking
    assert all((h["n"], h["failed"]) == (seeds, 0) for h in heads.values()), search.ranking
    done = [(t.label, t.seed) for t in trials(settings, sid) if t.state == "COMPLETE"]
    assert sorted(done) == sorted(set(done)) and len(done) == len(LABELS) * seeds


def test_a_worker_killed_mid_trial_is_retried_and_each_run_counts_once(
    pg_database_url, tmp_path, clean_env
):
    settings = pg_settings(pg_database_url, tmp_path)
    sid = new_search(settings, tiny(strategy="independent", budget={"epochs": 4}))
    log_path = tmp_path / "workers.log"
    first = start_worker(settings, log_path)
    second = None
    dispatcher = ProcrastinateDispatcher(settings)
    dispatcher.start()
    try:
        dispatcher.submitted(sid, settings.queue)
        wait_until(lambda: reports(settings, sid), timeout=180, what="a first epoch report")
        trial_processes = children(first.pid)
        assert trial_processes, "the worker runs its trial in a child process"

        os.kill(first.pid, signal.SIGKILL)  # the worker only: its trial must not outlive it
        first.wait(timeout=30)
        wait_until(
            lambda: not any(alive(pid) for pid in trial_processes),
            timeout=15,
            what="the orphaned trial process to die with its worker",
        )

        second = start_worker(settings, log_path)  # its maintenance retries the stalled job
        status = wait_until(
            lambda: final_status(settings, sid), timeout=360, what=f"the retry ({log_path})"
        )
    finally:
        dispatcher.stop()
        for proc in (first, second):
            if proc is not None:
                stop(proc)
    assert status == "completed", log_path.read_text()[-3000:]
    kinds = [k for k, _ in events(settings, sid)]
    assert kinds.count("search.running") == 1  # the retry resumes it: no second start

    failed = [t for t in trials(settings, sid) if t.state == "FAIL"]
    assert len(failed) == 1, [(t.label, t.state, t.attrs.get("failure_reason")) for t in failed]
    assert failed[0].attrs["failure_reason"] == INTERRUPTED and failed[0].label in LABELS
    assert_each_run_counted_once(settings, sid)


def _follow(url: str, key: str, last_id: int | None, got: list, stop_after: threading.Event):
    """Read the event stream into ``got`` until a final event or until the connection dies."""
    headers = {"Authorization": f"Bearer {key}"}
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    try:
        with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(10, read=60)) as r:
            assert r.status_code == 200, r.read()
            for event in parse_sse(r.iter_lines()):
                got.append(event)
                if event.kind == "trial.reported":
                    stop_after.set()
                if event.kind in FINAL_EVENTS:
                    return "final"
    except httpx.HTTPError:
        return "lost"
    return "ended"


def test_an_api_restart_loses_nothing_and_sse_clients_resume_with_last_event_id(
    pg_database_url, tmp_path, clean_env, reserved_port
):
    settings = pg_settings(pg_database_url, tmp_path)
    key = tenant_key(settings)
    port, log_path = reserved_port, tmp_path / "api.log"  # held: the restart gets it again
    base = f"http://127.0.0.1:{port}"
    api = start_serve(settings, port, log_path, local_workers=0)
    worker = start_worker(settings, tmp_path / "worker.log")
    body = {**TINY_SEARCH, "budget": {**TINY_SEARCH["budget"], "epochs": 3}}
    try:
        answer = httpx.post(
            f"{base}/v1/searches", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert answer.status_code == 202, answer.text
        sid = uuid.UUID(answer.json()["id"])
        url = f"{base}/v1/searches/{sid}/events"

        got: list = []
        reported = threading.Event()
        outcome: dict[str, str] = {}
        reader = threading.Thread(
            target=lambda: outcome.update(first=_follow(url, key, None, got, reported))
        )
        reader.start()
        assert reported.wait(timeout=180), "no trial.reported event reached the SSE client"
        os.killpg(api.pid, signal.SIGKILL)  # a crash: no graceful close of the stream
        api.wait(timeout=30)
        reader.join(timeout=60)
        assert outcome.get("first") == "lost", outcome
        seen_before = len(got)

        api = start_serve(settings, port, log_path, local_workers=0)
        assert _follow(url, key, got[-1].id, got, threading.Event()) == "final"
        status = wait_until(lambda: final_status(settings, sid), timeout=60, what="final status")
    finally:
        stop(api)
        stop(worker)
    assert status == "completed", (tmp_path / "worker.log").read_text()[-3000:]
    assert seen_before < len(got)  # the second connection delivered the rest
    ids = [e.id for e in got]
    assert ids == sorted(set(ids))  # in order, none twice
    stored = events(settings, sid)
    assert [e.kind for e in got] == [kind for kind, _ in stored]  # none missed
    assert_each_run_counted_once(settings, sid)


def test_a_postgresql_restart_mid_search_is_ridden_out_by_api_and_worker(
    tmp_path, clean_env, reserved_port
):
    cluster = Cluster().start()  # our own server: the session's shared one must not restart
    settings = pg_settings(cluster.url(cluster.create_database()), tmp_path)
    api = worker = None
    try:
        migrate(settings)
        key = tenant_key(settings, max_concurrent=4)
        engine_of(settings).dispose()
        headers = {"Authorization": f"Bearer {key}"}
        base = f"http://127.0.0.1:{reserved_port}"
        api = start_serve(settings, reserved_port, tmp_path / "api.log", local_workers=0)
        worker = start_worker(settings, tmp_path / "worker.log")
        body = {
            **TINY_SEARCH,
            "strategy": "independent",  # one run per head: several results meet the outage
            "budget": {**TINY_SEARCH["budget"], "epochs": 4},
        }

        def submit(seed: int) -> uuid.UUID:
            answer = httpx.post(f"{base}/v1/searches", json={**body, "seed": seed}, headers=headers)
            assert answer.status_code == 202, answer.text
            return uuid.UUID(answer.json()["id"])

        def status_of(sid: uuid.UUID) -> str | None:
            try:
                answer = httpx.get(f"{base}/v1/searches/{sid}", headers=headers, timeout=10)
            except httpx.HTTPError:
                return None
            if answer.status_code != 200:
                return None
            return answer.json()["status"]

        sid = submit(0)
        wait_until(lambda: reports(settings, sid), timeout=180, what="a first epoch report")
        engine_of(settings).dispose()  # the test's own pool must not hold dead connections
        cluster.restart(down_s=8)  # longer than a trial: a result meets the outage

        done = wait_until(
            lambda: status_of(sid) in FINAL and status_of(sid), 300, f"search {sid} to end"
        )
        assert done == "completed", (tmp_path / "worker.log").read_text()[-3000:]
        assert api.poll() is None and worker.poll() is None  # neither process gave up
        assert httpx.get(f"{base}/readyz").status_code == 200
        assert_each_run_counted_once(settings, sid)
        epochs: dict[str, set[int]] = {}  # events written during the outage arrive late, not never
        for kind, data in events(settings, sid):
            if kind == "trial.reported":
                epochs.setdefault(data["run"], set()).add(data["epoch"])
        assert len(epochs) == len(LABELS) and all({1, 2, 3, 4} <= e for e in epochs.values())

        after = submit(1)  # the worker still takes new work after the restart
        again = wait_until(
            lambda: status_of(after) in FINAL and status_of(after), 300, f"search {after} to end"
        )
        assert again == "completed", (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        for proc in (api, worker):
            if proc is not None:
                stop(proc)
        engine_of(settings).dispose()
        cluster.stop()
