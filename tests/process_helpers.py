"""Real server processes for the end-to-end tests: ``hssl serve`` (the API, with or without its
embedded workers) and ``hssl worker`` (procrastinate), each logging to a file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from service.persistence.settings import Settings
from tests.cli_helpers import BIN
from tests.conftest import make_settings
from tests.net_helpers import http
from tests.waiting import wait_until


def pg_settings(pg_database_url: str, tmp_path: Path) -> Settings:
    """PostgreSQL production path: the API defers, ``hssl worker`` processes run searches."""
    return make_settings(tmp_path, pg_database_url, local_workers=0, heartbeat_s=1)


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "HSSL_DATABASE_URL": settings.resolved_database_url,
        "HSSL_DATA_DIR": str(settings.data_dir),
        "HSSL_HEARTBEAT_S": "1",
        "HSSL_WARM_POOL": "0",  # spares cost CPU the suite's runs need (tested in test_warm_pool)
        **extra,
    }


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "hssl"), "worker", "--slots", "1"],
        env=_env(settings, HSSL_LOCAL_WORKERS="0"),
        stdout=log_path.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_serve(
    settings: Settings, port: int, log_path: Path, *, local_workers: int | None = None
) -> subprocess.Popen:
    """``hssl serve`` on ``port`` (a ``ReservedPort`` the caller holds, so a restart gets it
    again), once it answers /healthz (its own process group, so a SIGKILL of the group takes
    its trial processes too)."""
    extra = {} if local_workers is None else {"HSSL_LOCAL_WORKERS": str(local_workers)}
    proc = subprocess.Popen(
        [str(BIN / "hssl"), "serve", "--port", str(port)],
        env=_env(settings, **extra),
        stdout=log_path.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def up() -> bool:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            return http("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200
        except OSError:
            return False

    wait_until(up, 60, "hssl serve to answer")
    return proc


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def trial_processes(pid: int) -> list[int]:
    """The children of ``pid`` that train (spawned trial processes, not multiprocessing's
    resource tracker, which lives as long as its parent)."""
    out = []
    for child in children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            out.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
