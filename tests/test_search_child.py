"""``execute_in_child``: the embedded dispatcher's search runs in a spawned child process. A
child killed from outside (the kernel's OOM killer) fails its search with that reason; a
SIGTERM (a ``kill`` of the server's process group) stops it as a shutdown does: the search
stays ``running``, to be resumed."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from service.jobs.child import execute_in_child
from tests.conftest import make_settings
from tests.dispatch_helpers import events, new_search, search_row, trials
from tests.search_helpers import tiny
from tests.waiting import wait_until

LONG = tiny(strategy="joint", budget={"epochs": 200, "data_limit": 320})


def search_child() -> int:
    """The one spawned child of this process (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == os.getpid() and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(entry.name))
    assert len(found) == 1, found
    return found[0]


def run_until_reported(settings, signum: int) -> tuple:
    """Start the long search in a child, wait for its first epoch, send ``signum`` to the
    child; (the outcome, the search id)."""
    sid = new_search(settings, LONG)
    result: dict[str, str] = {}
    runner = threading.Thread(target=lambda: result.update(outcome=execute_in_child(settings, sid)))
    runner.start()
    try:
        wait_until(
            lambda: any(k == "trial.reported" for k, _ in events(settings, sid)),
            240,
            "the first epoch report",
        )
        os.kill(search_child(), signum)
    finally:
        runner.join(120)
    assert not runner.is_alive()
    return result["outcome"], sid


@pytest.mark.slow
def test_a_killed_search_process_fails_its_search_with_the_reason(
    sqlite_database_url, tmp_path, clean_env
):
    settings = make_settings(tmp_path, sqlite_database_url)
    outcome, sid = run_until_reported(settings, signal.SIGKILL)
    row = search_row(settings, sid)
    assert outcome == "failed" and row.status == "failed"
    assert row.error == (
        "its search process died (killed by SIGKILL, e.g. out of memory); "
        "the server log has its last lines"
    )


@pytest.mark.slow
def test_sigterm_stops_the_search_process_and_leaves_the_search_to_resume(
    sqlite_database_url, tmp_path, clean_env
):
    settings = make_settings(tmp_path, sqlite_database_url)
    outcome, sid = run_until_reported(settings, signal.SIGTERM)
    assert outcome == "interrupted" and search_row(settings, sid).status == "running"
    assert events(settings, sid)[-1][0] == "search.interrupted"
    assert trials(settings, sid) == []  # the abandoned run is not recorded as a failed trial
