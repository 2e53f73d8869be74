"""Liveness, readiness and metrics (no API key: for load balancers and Prometheus)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from sqlalchemy.exc import SQLAlchemyError

from service.errors import Unavailable
from service.http.deps import EngineDep
from service.http.metrics import CONTENT_TYPE, render
from service.http.routes import problems
from service.http.schemas import Health
from service.persistence.migrate import alembic_at_head

router = APIRouter(tags=["operations"])
log = logging.getLogger("service.api")
METRICS_EXAMPLE = (
    "# TYPE hssl_queue_depth gauge\nhssl_queue_depth 2\n"
    '# TYPE hssl_searches gauge\nhssl_searches{status="running"} 1\n'
)


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: the database answers and is migrated to the newest revision",
    responses=problems(503, d503="the database is unreachable or not migrated"),
)
def readyz(engine: EngineDep) -> Health:
    try:
        ready = alembic_at_head(engine)
    except (SQLAlchemyError, OSError) as exc:
        log.warning("readiness check failed: %s", exc)
        raise Unavailable(
            f"the database does not answer ({type(exc).__name__}); see the server log"
        ) from None
    if not ready:
        raise Unavailable("the database is not migrated to the newest revision; run `hssl migrate`")
    return Health(status="ready")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format 0.0.4",
            "content": {CONTENT_TYPE: {"schema": {"type": "string"}, "example": METRICS_EXAMPLE}},
        },
        **problems(503, d503="the database does not answer"),
    },
)
def metrics(request: Request, engine: EngineDep) -> Response:
    try:
        text = render(engine, request.app.state.requests)
    except (SQLAlchemyError, OSError) as exc:
        log.warning("metrics failed: %s", exc)
        raise Unavailable(f"the database does not answer ({type(exc).__name__})") from None
    return Response(text, media_type=CONTENT_TYPE)
