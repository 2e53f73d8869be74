"""Alembic environment: our tables only, with our own version table.

Optuna keeps its own ``alembic_version`` (in its own schema or SQLite file), so the two
migration histories never meet. The URL comes from the service settings (``HSSL_DATABASE_URL``
or the embedded SQLite file) unless ``-x url=...`` is given.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool

from service.persistence.db import engine_for
from service.persistence.models import Base
from service.persistence.settings import get_settings

VERSION_TABLE = "hssl_alembic_version"


def database_url() -> str:
    return context.get_x_argument(as_dictionary=True).get("url") or (
        get_settings().resolved_database_url
    )


def run_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=Base.metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    url = database_url()
    engine = engine_for(url) if url.startswith("sqlite") else None
    if engine is None:
        from sqlalchemy import create_engine

        engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            version_table=VERSION_TABLE,
            render_as_batch=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
