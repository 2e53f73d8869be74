"""``service.persistence.migrate`` on SQLite and PostgreSQL: every schema at head, each in its own
place, idempotent, and ``alembic_at_head`` tells a migrated database from an empty or stale one."""

import sqlite3
import threading
from contextlib import closing

import optuna
import psycopg
from sqlalchemy import create_engine, pool, text

from service.persistence.migrate import alembic_at_head, migrate, psycopg_conninfo, script_heads
from tests.conftest import make_settings

OURS = {"tenants", "api_keys", "searches", "search_trials", "search_events", "jobs"}
OPTUNA = {"studies", "trials", "trial_values", "version_info", "alembic_version"}


def tables_pg(url: str) -> dict[str, set[str]]:
    with psycopg.connect(psycopg_conninfo(url)) as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    found: dict[str, set[str]] = {}
    for schema, name in rows:
        found.setdefault(schema, set()).add(name)
    return found


def tables_sqlite(path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def at_head(url: str) -> bool:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        return alembic_at_head(engine)
    finally:
        engine.dispose()


def test_migrate_puts_every_schema_at_head_in_its_own_place_and_is_idempotent(
    empty_database_url, tmp_path
):
    settings = make_settings(tmp_path, empty_database_url)
    assert not at_head(empty_database_url)

    first = migrate(settings)
    assert first["hssl"] == {"from": [], "to": sorted(script_heads())}
    assert at_head(empty_database_url)

    if settings.is_postgres:
        found = tables_pg(empty_database_url)
        assert found["public"] >= OURS | {"hssl_alembic_version", "procrastinate_jobs"}
        assert found["optuna"] >= OPTUNA  # Optuna's own alembic_version, apart from ours
        assert not found["public"] & OPTUNA and not found["optuna"] & OURS
        assert first["procrastinate"] == {"applied": True}
    else:
        ours, theirs = (
            tables_sqlite(tmp_path / "hssl.sqlite3"),
            tables_sqlite(tmp_path / "optuna.sqlite3"),
        )
        assert ours >= OURS | {"hssl_alembic_version"} and not ours & OPTUNA
        assert theirs >= OPTUNA and not theirs & OURS

    # Optuna reaches its tables through settings.resolved_optuna_url (search_path on PG)
    storage = optuna.storages.RDBStorage(
        settings.resolved_optuna_url, engine_kwargs={"poolclass": pool.NullPool}
    )
    optuna.create_study(study_name="probe", storage=storage)
    storage.engine.dispose()
    if settings.is_postgres:
        with psycopg.connect(psycopg_conninfo(empty_database_url)) as conn:
            names = conn.execute("SELECT study_name FROM optuna.studies").fetchall()
        assert names == [("probe",)]

    again = migrate(settings)
    assert again["hssl"]["from"] == again["hssl"]["to"] == sorted(script_heads())
    assert again["optuna"]["from"] == again["optuna"]["to"] == first["optuna"]["to"]
    if settings.is_postgres:
        assert again["procrastinate"] == {"applied": False}
        assert tables_pg(empty_database_url) == found
    assert at_head(empty_database_url)
    assert optuna.get_all_study_names(settings.resolved_optuna_url) == ["probe"]

    # a database behind the scripts (or ahead of them) is not at head
    engine = create_engine(empty_database_url, poolclass=pool.NullPool)
    with engine.begin() as conn:
        conn.execute(text("UPDATE hssl_alembic_version SET version_num = 'older'"))
    assert not alembic_at_head(engine)
    engine.dispose()


def test_concurrent_migrations_on_postgresql_take_turns(empty_pg_database_url, tmp_path):
    settings = make_settings(tmp_path, empty_pg_database_url)
    reports, errors = [], []

    def run() -> None:
        try:
            reports.append(migrate(settings))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(r["procrastinate"]["applied"] for r in reports) == [False, True]
    assert sorted(len(r["hssl"]["from"]) for r in reports) == [0, 1]
    assert at_head(empty_pg_database_url)


def test_optuna_url_selects_its_schema_and_keeps_other_connection_options(
    pg_database_url, tmp_path
):
    url = pg_database_url + "?options=-c%20statement_timeout%3D4321"
    settings = make_settings(tmp_path, url)
    engine = create_engine(settings.resolved_optuna_url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        assert conn.execute(text("SHOW search_path")).scalar() == settings.optuna_schema
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "4321ms"
        assert conn.execute(text("SELECT count(*) FROM version_info")).scalar() == 1
    engine.dispose()
