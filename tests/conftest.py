"""Database fixtures: every test that asks for ``database_url`` runs on SQLite and on a real
PostgreSQL (a throwaway cluster started once per session, see ``tests/pg.py``).

- ``pg_cluster`` (session): the running cluster; fails (never skips) without PostgreSQL.
- ``pg_template`` (session): ``hssl_template``, migrated once (our tables, Optuna's schema,
  procrastinate's), cloned by each test's own database.
- ``pg_database_url`` / ``sqlite_database_url``: a fresh migrated database for this test.
- ``database_url``: either of those, parametrised ``["sqlite", "postgresql"]``.
- ``empty_database_url``: an unmigrated database, parametrised the same way.
- ``settings``: ``Settings(data_dir=tmp_path, database_url=database_url)``, isolated from
  ``HSSL_*`` variables (``clean_env``) and ``.env``; ``make_settings(data_dir, url, **kw)`` builds
  more (e.g. ``data_root=``).
- ``reserved_port``: a loopback port held for the test's server processes (``ReservedPort``).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import torch

from tests.net_helpers import ReservedPort
from tests.pg import Cluster, PostgresUnavailable

BACKENDS = ["sqlite", "postgresql"]
PG_TEMPLATE = "hssl_template"
SQLITE_FILES = ("hssl.sqlite3", "optuna.sqlite3")


def make_settings(data_dir: Path, database_url: str | None = None, **overrides):
    from service.persistence.settings import Settings

    overrides.setdefault("warm_pool", False)  # spares cost CPU the suite's runs need
    return Settings(_env_file=None, data_dir=data_dir, database_url=database_url, **overrides)


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'hssl.sqlite3'}"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One intra-op thread per process, here and in the processes tests start: on a shared
    2-core machine multi-threaded kernels on tiny tensors mostly wait for busy cores (measured
    up to 40x slower)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def clean_env(monkeypatch):
    """No HSSL_* variables: settings built in the test (or its subprocesses) see only defaults."""
    for name in [n for n in os.environ if n.startswith("HSSL_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def reserved_port() -> Iterator[int]:
    """A loopback port no one else can take while the test runs: its server processes bind it
    (again, after a restart) themselves."""
    with ReservedPort() as port:
        yield port


# ---- PostgreSQL --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_cluster():
    try:
        cluster, error = Cluster().start(), None
    except PostgresUnavailable as exc:
        error = str(exc)
    if error:  # fail, never skip: CI must not pass without having run these
        pytest.fail(f"PostgreSQL tests cannot run: {error}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def pg_template(pg_cluster, tmp_path_factory) -> str:
    from service.persistence.migrate import migrate

    pg_cluster.create_database(name=PG_TEMPLATE)
    data_dir = tmp_path_factory.mktemp("pg-template")
    migrate(make_settings(data_dir, pg_cluster.url(PG_TEMPLATE)))
    pg_cluster.mark_template(PG_TEMPLATE)
    return PG_TEMPLATE


@pytest.fixture
def pg_database_url(pg_cluster, pg_template):
    name = pg_cluster.create_database(template=pg_template)
    yield pg_cluster.url(name)
    pg_cluster.drop_database(name)


@pytest.fixture
def empty_pg_database_url(pg_cluster):
    name = pg_cluster.create_database()
    yield pg_cluster.url(name)
    pg_cluster.drop_database(name)


# ---- SQLite ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    from service.persistence.db import engine_for
    from service.persistence.migrate import migrate

    data_dir = tmp_path_factory.mktemp("sqlite-template")
    migrate(make_settings(data_dir))
    engine_for(sqlite_url(data_dir)).dispose()
    return data_dir


@pytest.fixture
def sqlite_database_url(sqlite_template, tmp_path) -> str:
    """Our file and Optuna's, copied (SQLite's backup API) from the migrated template."""
    for name in SQLITE_FILES:
        with (
            closing(sqlite3.connect(sqlite_template / name)) as src,
            closing(sqlite3.connect(tmp_path / name)) as dst,
        ):
            src.backup(dst)
    return sqlite_url(tmp_path)


# ---- either ------------------------------------------------------------------------------
@pytest.fixture(params=BACKENDS)
def database_url(request) -> str:
    """A migrated database of this test's own, on each backend."""
    prefix = "pg" if request.param == "postgresql" else "sqlite"
    return request.getfixturevalue(f"{prefix}_database_url")


@pytest.fixture(params=BACKENDS)
def empty_database_url(request, tmp_path) -> str:
    """An unmigrated database (SQLite: a path in tmp_path that does not exist yet)."""
    if request.param == "postgresql":
        return request.getfixturevalue("empty_pg_database_url")
    return sqlite_url(tmp_path)


@pytest.fixture
def settings(database_url, tmp_path, clean_env):
    return make_settings(tmp_path, database_url)


@pytest.fixture
def start(database_url, tmp_path, clean_env):
    """start(dispatcher=None, **settings) → a running API over real HTTP (on each backend)."""
    from tests.api_helpers import api_stack

    with api_stack(database_url, tmp_path) as start_api:
        yield start_api


@pytest.fixture
def api(start):
    return start()
