"""A throwaway PostgreSQL cluster for the tests: initdb into a temp dir, one postmaster on a
loopback port held for it (``ReservedPort``) and a unix socket dir under /tmp, trust auth, no
fsync. Root cannot run PostgreSQL, so as root the binaries run as the ``postgres`` OS user
(Debian's package makes it).

A missing installation is an error, never a skip: ``scripts/test.sh`` installs it.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from tests.net_helpers import ReservedPort

INSTALL_HINT = (
    "run `bash scripts/test.sh` (it installs Debian's postgresql as root), "
    "`apt-get install -y postgresql`, or set PG_BINDIR"
)
SUPERUSER = "postgres"


class PostgresUnavailable(RuntimeError):
    """The tests need PostgreSQL binaries (initdb, pg_ctl) and could not find or run them."""


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl: $PG_BINDIR, PATH, or Debian's newest version."""
    if os.environ.get("PG_BINDIR"):
        candidates = [Path(os.environ["PG_BINDIR"])]
    else:
        on_path = shutil.which("initdb")
        candidates = [Path(on_path).resolve().parent] if on_path else []
        debian = sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),
            key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        )
        candidates += [Path(p) for p in reversed(debian)]
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise PostgresUnavailable(f"PostgreSQL's initdb/pg_ctl were not found; {INSTALL_HINT}")


class Cluster:
    """One postmaster; ``url(db)`` gives SQLAlchemy URLs, ``create_database`` fresh databases."""

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.port = 0
        self._reserved: ReservedPort | None = None
        self.root: Path | None = None
        self.running = False
        self._options = ""
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SUPERUSER)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root but no {SUPERUSER!r} OS user to run PostgreSQL as; "
                    f"{INSTALL_HINT}"
                ) from None
            self._as_user = ["runuser", "-u", SUPERUSER, "--"]

    # ---- lifecycle --------------------------------------------------------------------
    def start(self) -> Cluster:
        self.root = Path(tempfile.mkdtemp(prefix="hssl-pg-", dir="/tmp"))
        atexit.register(self.stop)  # also on an interrupted session
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Cluster:
        assert self.root is not None
        data, sockets = self.root / "data", self.root / "sock"
        sockets.mkdir()
        if self._as_user:
            user = pwd.getpwnam(SUPERUSER)
            for path in (self.root, sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        # the port stays held until stop(): no other test takes it, not even during restart()
        self._reserved = ReservedPort()
        self.port = self._reserved.port
        self._options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-p {self.port}",
                f"-k {sockets}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
                "-c shared_buffers=32MB",
            ]
        )
        proc = self._pg_ctl_start()
        if proc.returncode != 0:
            log = (self.root / "postgres.log").read_text(errors="replace")[-2000:]
            raise PostgresUnavailable(f"pg_ctl start failed: {proc.stderr.strip()}\n{log}")
        self.running = True
        return self

    def _pg_ctl_start(self) -> subprocess.CompletedProcess:
        assert self.root is not None
        return self._run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            "30",
            "-D",
            str(self.root / "data"),
            "-l",
            str(self.root / "postgres.log"),
            "-o",
            self._options,
            check=False,
        )

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server (``-m fast``: every session is terminated, as in a real restart),
        stay down ``down_s`` seconds, start it again on the same port (held meanwhile)."""
        assert self.root is not None and self.running
        self._run("pg_ctl", "stop", "-D", str(self.root / "data"), "-m", "fast", "-w")
        self.running = False
        time.sleep(down_s)
        proc = self._pg_ctl_start()
        if proc.returncode != 0:
            raise PostgresUnavailable(f"pg_ctl start failed: {proc.stderr.strip()}")
        self.running = True

    def stop(self) -> None:
        if self.root is None:
            return
        if self.running:
            self._run(
                "pg_ctl",
                "stop",
                "-D",
                str(self.root / "data"),
                "-m",
                "immediate",
                "-w",
                check=False,
            )
            self.running = False
        if self._reserved is not None:
            self._reserved.release()
            self._reserved = None
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [*self._as_user, str(self.bindir / tool), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/tmp", timeout=120)
        if check and proc.returncode != 0:
            raise PostgresUnavailable(f"{tool} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    # ---- databases --------------------------------------------------------------------
    def url(self, dbname: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def conninfo(self, dbname: str = "postgres") -> str:
        return self.url(dbname, driver="postgresql")

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.conninfo(), autocommit=True)

    def create_database(self, template: str = "template0", name: str | None = None) -> str:
        name = name or f"t_{uuid.uuid4().hex}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def mark_template(self, name: str) -> None:
        """Let others clone ``name`` and refuse new connections to it (clones need none)."""
        with self.admin() as conn:
            conn.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')
