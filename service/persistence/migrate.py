"""``hssl migrate``: bring every schema the service uses to its head, idempotently.

1. Our tables: alembic upgrade head (version table ``hssl_alembic_version``).
2. Optuna's tables: on PostgreSQL in their own schema (``settings.optuna_schema``, selected by
   the ``options=-csearch_path=...`` of ``settings.resolved_optuna_url``), on SQLite in their own
   file; created by Optuna itself and upgraded with Optuna's own migrations when it is behind.
3. PostgreSQL only: procrastinate's schema (the worker queue), applied once.

On PostgreSQL the whole run holds an advisory lock, so two ``hssl migrate`` started together
(e.g. by two replicas) run one after the other.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, make_url, pool, text

from service.persistence.settings import Settings

REPO = Path(__file__).resolve().parents[2]  # service/persistence/migrate.py → the repository
SCRIPT_LOCATION = REPO / "alembic"
VERSION_TABLE = "hssl_alembic_version"
LOCK_KEY = 0x4853_534C  # "HSSL": pg_advisory_lock key serialising concurrent migrations


def alembic_config(url: str | None = None):
    """Alembic's config for our migrations; ``url`` reaches env.py as ``-x url=...``."""
    from alembic.config import Config

    ini = REPO / "alembic.ini"
    cfg = Config(str(ini)) if ini.is_file() else Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url is not None:
        cfg.cmd_opts = argparse.Namespace(x=[f"url={url}"])
    return cfg


@lru_cache(maxsize=1)
def script_heads() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revisions(engine: Engine) -> frozenset[str]:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return frozenset(ctx.get_current_heads())


def alembic_at_head(engine: Engine) -> bool:
    """True when our tables are migrated to the newest revision (``/readyz``).

    Database errors (unreachable, auth) propagate as SQLAlchemy exceptions; an empty database
    is simply not at head.
    """
    return current_revisions(engine) == script_heads()


def psycopg_conninfo(url: str) -> str:
    """A libpq URI (what psycopg and procrastinate take) from a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@contextlib.contextmanager
def _migration_lock(settings: Settings) -> Iterator[None]:
    if not settings.is_postgres:
        yield
        return
    import psycopg

    with psycopg.connect(psycopg_conninfo(settings.resolved_database_url), autocommit=True) as c:
        c.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            yield
        finally:
            c.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def upgrade_ours(url: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def ensure_optuna(settings: Settings) -> dict[str, Any]:
    """Optuna's schema (PostgreSQL) and tables, upgraded to the installed Optuna's head."""
    import optuna

    if settings.is_postgres and not settings.optuna_url:
        engine = create_engine(settings.resolved_database_url, poolclass=pool.NullPool)
        try:
            with engine.begin() as conn:
                conn.execute(
                    text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(settings.optuna_schema)}")
                )
        finally:
            engine.dispose()
    storage = optuna.storages.RDBStorage(
        settings.resolved_optuna_url,
        engine_kwargs={"poolclass": pool.NullPool},
        skip_compatibility_check=True,
    )
    try:
        before = storage.get_current_version()
        if before != storage.get_head_version():
            storage.upgrade()
        return {"from": before, "to": storage.get_current_version()}
    finally:
        storage.engine.dispose()


def procrastinate_applied(settings: Settings) -> bool:
    import psycopg

    with psycopg.connect(psycopg_conninfo(settings.resolved_database_url)) as conn:
        row = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
        return bool(row and row[0])


def ensure_procrastinate(settings: Settings) -> bool:
    """Apply procrastinate's schema unless its tables exist; True when it was applied now."""
    if procrastinate_applied(settings):
        return False
    import procrastinate

    connector = procrastinate.SyncPsycopgConnector(
        conninfo=psycopg_conninfo(settings.resolved_database_url), min_size=1, max_size=1
    )
    app = procrastinate.App(connector=connector)
    with app.open():
        app.schema_manager.apply_schema()
    return True


def migrate(settings: Settings) -> dict[str, Any]:
    """Run every migration; returns what it did (printed by ``hssl migrate``)."""
    url = settings.resolved_database_url
    with _migration_lock(settings):
        engine = create_engine(url, poolclass=pool.NullPool)
        try:
            before = sorted(current_revisions(engine))
            upgrade_ours(url)
            after = sorted(current_revisions(engine))
        finally:
            engine.dispose()
        report: dict[str, Any] = {
            "database": make_url(url).render_as_string(hide_password=True),
            "hssl": {"from": before, "to": after},
            "optuna": ensure_optuna(settings),
        }
        if settings.is_postgres:
            report["optuna"]["schema"] = settings.optuna_schema
            report["procrastinate"] = {"applied": ensure_procrastinate(settings)}
    return report
