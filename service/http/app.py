"""The HTTP API (FastAPI): ``uvicorn service.api:app`` or ``create_app(settings)`` in tests.

It validates and stores searches and serves their results; it never trains (workers do, via
``service.jobs.execute``). Importing this module touches no database: the engine is opened on the
first request that needs it. Errors are RFC 9457 problem+json (``service.http.problems``).
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy import Engine

from search.spec import SearchSpec
from service.http import problems
from service.http.auth import KeyCache, RateLimiter
from service.http.metrics import RequestCounter
from service.http.middleware import RequestGuard
from service.http.routes import events, health, results, searches
from service.http.schemas import Problem
from service.jobs.dispatcher import Dispatcher
from service.persistence.db import engine_for
from service.persistence.settings import Settings, get_settings

DESCRIPTION = """\
Find the best auxiliary head for HSSL pre-training of a vision model: submit a search spec,
follow its events, download the ranking and the recommendation.

Every `/v1` route needs `Authorization: Bearer <API key>`. Errors are
[RFC 9457](https://www.rfc-editor.org/rfc/rfc9457) `application/problem+json`.
"""


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None) -> FastAPI:
    """The app; ``dispatcher.submitted(search_id, queue)`` is called after each new search
    commits (None: the job row alone is the queue, e.g. for workers that poll it)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="hssl-search",
        version="1",
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "searches", "description": "submit, list, read and cancel searches"},
            {"name": "results", "description": "trials, ranking, recommendation"},
            {"name": "events", "description": "Server-Sent Events of a search"},
            {"name": "operations", "description": "health, readiness, metrics"},
        ],
    )
    state = app.state
    state.settings = settings
    state.dispatcher = dispatcher
    state.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
    state.key_cache = KeyCache(settings.key_cache_s)
    state.requests = RequestCounter()
    state.sse_poll_s = 0.5
    state.sse_ping_s = 15.0
    state.engine = _lazy_engine(settings)

    problems.install(app)
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes, counter=state.requests)
    for module in (searches, results, events, health):
        app.include_router(module.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _lazy_engine(settings: Settings):
    """The engine, created on first use (so importing the app needs no database)."""
    lock = threading.Lock()
    holder: list[Engine] = []

    def engine() -> Engine:
        if not holder:
            with lock:
                if not holder:
                    holder.append(
                        engine_for(
                            settings.resolved_database_url,
                            settings.pool_size,
                            settings.max_overflow,
                        )
                    )
        return holder[0]

    return engine


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the schemas our hand-written parts refer to (the request body
    ``SearchSpec``, read by the route itself so bad input stays a 4xx; and ``Problem``)."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    template = "#/components/schemas/{model}"
    for model in (SearchSpec, Problem):
        schema = model.model_json_schema(ref_template=template, mode="validation")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    _no_null_parameters(doc)
    app.openapi_schema = doc
    return doc


def _no_null_parameters(doc: dict[str, Any]) -> None:
    """An optional query or header parameter (``int | None = None``) is omitted, never JSON
    ``null``: FastAPI documents it as ``anyOf: [..., {"type": "null"}]``, which invites clients
    (and fuzzers) to send the text ``null``, refused as 422. Keep only the non-null schema."""
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                options = [s for s in schema.get("anyOf", ()) if s != {"type": "null"}]
                if "anyOf" in schema and len(options) < len(schema["anyOf"]):
                    del schema["anyOf"]
                    if len(options) == 1:
                        schema.update(options[0])
                    else:
                        schema["anyOf"] = options


def _module_app() -> FastAPI:
    """``uvicorn service.api:app``: on PostgreSQL with no local workers the API hands each new
    search to procrastinate (``hssl worker`` runs it); otherwise the job row is the queue (the
    dispatcher of ``hssl serve`` claims it). Nothing connects before the first request."""
    settings = get_settings()
    dispatcher = None
    if settings.hands_searches_to_procrastinate:
        from service.jobs.tasks import ProcrastinateDispatcher

        dispatcher = ProcrastinateDispatcher(settings)
    return create_app(settings, dispatcher)


app = _module_app()
