"""Accepting a search: the body → a validated ``SearchSpec`` with its data resolved → one
transaction (search + job + first event) → the dispatcher is told.

Validation is complete here (timm names, head specs, data under the data root) so a bad spec
is a 4xx now, never a failed job later; nothing here trains or imports the training loop.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from search.spec import SearchSpec, planned_trials
from service.errors import InvalidSpec, MalformedBody
from service.http.problems import invalid_spec
from service.jobs.dispatcher import Dispatcher
from service.persistence import store
from service.persistence.db import session_scope
from service.persistence.models import Search, Tenant
from service.persistence.settings import Settings
from training.errors import DataError, HSSLError, first_line
from training.sources import resolve_source

log = logging.getLogger("service.api")
MAX_IDEMPOTENCY_KEY = 200


def parse_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object (NaN/Infinity refused: they are not JSON)."""
    if not body.strip():
        raise InvalidSpec(
            "the body is empty; send a search spec as a JSON object ({} takes every default)",
            errors=[{"field": "", "message": "a JSON object is required"}],
        )
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise MalformedBody(f"the body is not valid JSON: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise InvalidSpec(
            f"the body must be a JSON object (a search spec), not {type(data).__name__}",
            errors=[{"field": "", "message": "a JSON object is required"}],
        )
    return data


def validate_spec(data: dict[str, Any]) -> SearchSpec:
    """``SearchSpec`` validation; any error a validator lets slip is still a 422. Strict: the
    body is JSON and gets exactly what its JSON Schema says (lax mode would take ``true`` or
    ``"2"`` for an integer)."""
    try:
        return SearchSpec.model_validate(data, strict=True)
    except ValidationError as exc:
        raise invalid_spec(exc) from None
    except (HSSLError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        message = first_line(exc)
        raise InvalidSpec(message, errors=[{"field": "", "message": message}]) from None


def resolve_data(source: str, root: Path) -> str:
    """A built-in source as is, else a folder inside ``root`` (relative paths start there) as
    its resolved absolute path (symlinks resolved first, so a link out of the root is refused)."""
    try:
        return resolve_source(source, root, base=root)
    except DataError as exc:
        log.info("refused a spec's data: %s", exc)  # the operator sees the server paths
        message = exc.public  # the client its own terms only
        raise InvalidSpec(message, errors=[{"field": "data", "message": message}]) from None


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable() or not key.isascii():
        raise InvalidSpec(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters",
            errors=[{"field": "Idempotency-Key", "message": "invalid header"}],
        )
    return key


def submit_search(
    settings: Settings,
    engine: Engine,
    tenant: Tenant,
    body: bytes,
    *,
    idempotency_key: str | None = None,
    dispatcher: Dispatcher | None = None,
) -> tuple[Search, bool]:
    """Validate and store a search; returns (search, created). A replay (same key and body)
    returns the first search with created=False; the dispatcher hears only of new ones."""
    key = check_idempotency_key(idempotency_key)
    spec = validate_spec(parse_body(body))
    spec = spec.model_copy(update={"data": resolve_data(spec.data, settings.resolved_data_root)})
    planned = planned_trials(spec)
    stored = spec.model_dump(mode="json")
    search_id = uuid.uuid4()
    try:
        search, created = _insert(settings, engine, tenant, stored, spec, planned, key, search_id)
    except IntegrityError:
        # another request with the same Idempotency-Key committed first: answer as a replay
        if key is None:
            raise
        search, created = _insert(settings, engine, tenant, stored, spec, planned, key, search_id)
    if created and dispatcher is not None:
        try:
            dispatcher.submitted(search.id, settings.queue)
        except Exception:  # the job row is the outbox: a worker or the sweeper still finds it
            log.exception("dispatcher.submitted failed for search %s", search.id)
    return search, created


def study_name_for(spec: SearchSpec, search_id: uuid.UUID) -> str:
    """The search's Optuna study, as optuna-dashboard lists it: the spec's name (or its base
    and strategy) made safe, then 12 hex digits of the search id (unique per search, so two
    searches of one name never share a study), e.g. ``quickstart-1a2b3c4d5e6f``."""
    stem = spec.name or f"{spec.base.name}-{spec.strategy}"
    stem = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:60] or "search"
    return f"{stem}-{search_id.hex[:12]}"


def _insert(
    settings: Settings,
    engine: Engine,
    tenant: Tenant,
    stored: dict[str, Any],
    spec: SearchSpec,
    planned: int,
    key: str | None,
    search_id: uuid.UUID,
) -> tuple[Search, bool]:
    study = study_name_for(spec, search_id)
    with session_scope(engine) as s:
        return store.create_search(
            s,
            tenant,
            spec=stored,
            name=spec.name or study,
            study_name=study,
            planned=planned,
            idempotency_key=key,
            queue=settings.queue,
            search_id=search_id,
        )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


__all__ = ["submit_search"]
