"""Operator commands: ``hssl migrate``, ``hssl tenants create``, ``hssl keys create|revoke``.

They act on the database the service settings name (``HSSL_DATABASE_URL``, or the SQLite file
under ``HSSL_DATA_DIR``) and print JSON. Bad input or an unreachable/unmigrated database ends in
one ``error: ...`` line and exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from service.cli.failures import fail_cleanly
from training.errors import HSSLError, one_line

Opt = typer.Option
Arg = typer.Argument
tenants_app = typer.Typer(help="Manage tenants (who owns searches and keys).", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys (hssl_<prefix>_<secret>).", no_args_is_help=True)

TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
KEY_PREFIX = re.compile(r"^(?:hssl_)?([0-9a-f]{8})(?:_.*)?$")


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """Database and migration failures as one-line ``HSSLError``s (``fail_cleanly`` prints)."""
    import psycopg
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as exc:
        raise HSSLError(f"database error: {one_line(exc.orig or exc)}") from None
    except (psycopg.Error, CommandError) as exc:
        raise HSSLError(f"database error: {one_line(exc)}") from None


def _settings():
    from service.persistence.settings import get_settings

    return get_settings()


@contextlib.contextmanager
def admin_session() -> Iterator[Any]:
    """A session on a database migrated to head (else: run ``hssl migrate`` first)."""
    from service.persistence.db import engine_for, session_scope
    from service.persistence.migrate import alembic_at_head

    settings = _settings()
    engine = engine_for(settings.resolved_database_url, settings.pool_size, settings.max_overflow)
    with database_errors():
        if not alembic_at_head(engine):
            raise HSSLError(
                f"the database {engine.url.render_as_string(hide_password=True)} is not "
                "migrated to the current version; run `hssl migrate` first"
            )
        with session_scope(engine) as session:
            yield session


def _echo(data: dict[str, Any]) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@fail_cleanly
def migrate() -> None:
    from service.persistence.migrate import migrate as run_migrations

    with database_errors():
        _echo(run_migrations(_settings()))


@tenants_app.command("create")
@fail_cleanly
def create_tenant(
    name: Annotated[str, Arg(help="unique tenant name: letters, digits, . _ - (max 100)")],
    max_concurrent: Annotated[
        int | None, Opt(help="active searches at once (default: HSSL_MAX_CONCURRENT_SEARCHES)")
    ] = None,
    max_trials: Annotated[
        int | None, Opt(help="planned trials per search (default: HSSL_MAX_TRIALS_PER_SEARCH)")
    ] = None,
    max_runs: Annotated[
        int | None,
        Opt(help="runs training at once over all its searches (default: HSSL_MAX_CONCURRENT_RUNS)"),
    ] = None,
) -> None:
    from service.persistence import store

    if not TENANT_NAME.match(name):
        raise HSSLError(
            f"invalid tenant name {name!r}: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    settings = _settings()
    quotas = {
        "max_concurrent": settings.max_concurrent_searches
        if max_concurrent is None
        else max_concurrent,
        "max_trials": settings.max_trials_per_search if max_trials is None else max_trials,
        "max_runs": settings.max_concurrent_runs if max_runs is None else max_runs,
    }
    for flag, value in quotas.items():
        if value < 1:
            raise HSSLError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    with admin_session() as s:
        tenant = store.create_tenant(s, name, **quotas)
    _echo(
        {
            "id": tenant.id,
            "name": tenant.name,
            "max_concurrent_searches": tenant.max_concurrent_searches,
            "max_trials_per_search": tenant.max_trials_per_search,
            "max_concurrent_runs": tenant.max_concurrent_runs,
        }
    )


@keys_app.command("create")
@fail_cleanly
def create_key(
    tenant: Annotated[str, Opt(help="name of the tenant the key acts for")],
    name: Annotated[str, Opt(help="a label to recognise the key by (max 100)")] = "",
) -> None:
    from service.persistence import store

    if len(name) > 100:
        raise HSSLError(f"--name is {len(name)} characters long; at most 100")
    with admin_session() as s:
        owner = store.tenant_by_name(s, tenant)
        if owner is None:
            raise HSSLError(
                f"no tenant {tenant!r}; create it first with `hssl tenants create {tenant}`"
            )
        key, row = store.create_api_key(s, owner, name)
    _echo({"tenant": owner.name, "name": row.name, "prefix": row.prefix, "key": key})
    typer.echo(
        "store this key now: it is shown only once (the service keeps only its hash); "
        f"revoke it with `hssl keys revoke {row.prefix}`",
        err=True,
    )


@keys_app.command("revoke")
@fail_cleanly
def revoke_key(
    prefix: Annotated[str, Arg(help="the 8 hex characters after 'hssl_' (or the whole key)")],
) -> None:
    from service.persistence import store

    match = KEY_PREFIX.match(prefix.strip())
    if match is None:
        raise HSSLError(
            f"{prefix!r} is not a key prefix: give the 8 hex characters after 'hssl_', "
            "as printed by `hssl keys create`"
        )
    with admin_session() as s:
        revoked = store.revoke_api_key(s, match.group(1))
    if not revoked:
        raise HSSLError(f"no live key with prefix {match.group(1)} (unknown or already revoked)")
    _echo({"prefix": match.group(1), "revoked": revoked})
