"""Engine, the one transaction boundary (``session_scope``), and what a database blink is
(``is_transient``) and how to wait it out (``wait_for_database``, ``retrying``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.persistence.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
RECONNECT_WITHIN_S = 120.0  # how long a restarted database may take to answer again


@lru_cache(maxsize=8)
def engine_for(url: str, pool_size: int = 2, max_overflow: int = 2) -> Engine:
    """PostgreSQL: small pool, connections checked before use. SQLite: WAL, FK on, waits."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow)


@lru_cache(maxsize=8)
def _sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = _sessions(engine)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def is_transient(exc: BaseException) -> bool:
    """A lost or refused connection (the server restarted, a network blip), anywhere in the
    exception's chain; not a constraint violation, a bad query or a missing table."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, OperationalError):
            return True
        if type(current).__name__ in ("OperationalError", "InterfaceError") and (
            type(current).__module__.startswith(("psycopg", "sqlite3"))
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def wait_for_database(engine: Engine, within_s: float = RECONNECT_WITHIN_S) -> None:
    """Return once ``SELECT 1`` succeeds (backing off up to 5 s); raise after ``within_s``."""
    deadline, pause = time.monotonic() + within_s, 0.2
    while True:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def retrying(engine: Engine, work: Callable[[], T], what: str, attempts: int = 5) -> T:
    """``work()``, run again after the database is back when it fails transiently (so
    ``work`` must be safe to repeat: one transaction, or a resumable step)."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            log.warning("%s: the database went away (%s); retrying when it is back", what, exc)
            wait_for_database(engine)
    raise AssertionError("unreachable")


def engine_of(settings: Settings) -> Engine:
    """This process's engine for the settings' database (one per URL and pool size)."""
    return engine_for(settings.resolved_database_url, settings.pool_size, settings.max_overflow)
