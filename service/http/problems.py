"""Every error the API answers is RFC 9457 problem details (``application/problem+json``).

Handlers map our ``Problem`` errors, the engine's ``HSSLError`` (bad input), request validation
(query, path, header), Starlette's route errors (404, 405), a database that does not answer
(503) and, last, anything unexpected: that
one is logged with its traceback and answered 500 with a generic detail. Bad input is caught
before it can get there.
"""

from __future__ import annotations

import http
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.errors import (
    Internal,
    InvalidInput,
    InvalidRequest,
    InvalidSpec,
    MalformedBody,
    Problem,
    Unavailable,
)
from service.http.schemas import PROBLEM_BASE
from training.errors import HSSLError

log = logging.getLogger("service.api")
MEDIA_TYPE = "application/problem+json"
MAX_DETAIL = 2000


class ProblemResponse(JSONResponse):
    media_type = MEDIA_TYPE


# ---- building answers --------------------------------------------------------------------
def problem_body(
    *, status: int, title: str, slug: str, detail: str, instance: str, **extra: Any
) -> dict[str, Any]:
    body = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": _clip(detail),
        "instance": instance,
    }
    body.update({k: v for k, v in extra.items() if k not in body})
    return body


def problem_response(
    request_path: str,
    *,
    status: int,
    title: str,
    slug: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> ProblemResponse:
    out = dict(headers or {})
    if status == 401:
        out.setdefault("WWW-Authenticate", 'Bearer realm="hssl-search"')
    if "retry_after" in extra:
        out.setdefault("Retry-After", str(extra["retry_after"]))
    body = problem_body(
        status=status, title=title, slug=slug, detail=detail, instance=request_path, **extra
    )
    return ProblemResponse(body, status_code=status, headers=out)


def from_problem(request_path: str, exc: Problem) -> ProblemResponse:
    return problem_response(
        request_path,
        status=exc.status,
        title=exc.title,
        slug=exc.slug,
        detail=exc.detail,
        **exc.extra,
    )


def field_errors(errors: Iterable[Mapping[str, Any]], *, drop: tuple[str, ...] = ()) -> list:
    """Pydantic's errors as ``[{"field": "budget.epochs", "message": ...}]``."""
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        while loc and loc[0] in drop:
            loc = loc[1:]
        message = re.sub(r"^(Value|Assertion) error, ", "", str(err.get("msg", "invalid")))
        out.append({"field": ".".join(loc), "message": _clip(message, 1000)})
    return out


def summary(errors: list[dict[str, str]]) -> str:
    parts = [f"{e['field'] or 'body'}: {e['message']}" for e in errors]
    return "; ".join(parts) or "the request is invalid"


def invalid_spec(exc: ValidationError) -> Problem:
    """A SearchSpec validation error as the 422 problem (field paths without 'body')."""
    errors = field_errors(exc.errors(include_input=False, include_url=False))
    return InvalidSpec(summary(errors), errors=errors)


def _clip(text: str, limit: int = MAX_DETAIL) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- handlers ----------------------------------------------------------------------------
async def _on_problem(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, Problem)
    return from_problem(request.url.path, exc)


async def _on_hssl_error(request: Request, exc: Exception) -> ProblemResponse:
    return from_problem(request.url.path, InvalidInput(str(exc) or type(exc).__name__))


async def _on_validation(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    raw = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in raw):
        return from_problem(
            request.url.path,
            MalformedBody("the body is not valid JSON; send a JSON object"),
        )
    errors = field_errors(raw, drop=("body",))
    return from_problem(request.url.path, InvalidRequest(summary(errors), errors=errors))


async def _on_http(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    detail = exc.detail if isinstance(exc.detail, str) else phrase
    headers = dict(exc.headers or {})
    if status == 404:
        detail = f"no route {request.url.path}; see /docs for the API"
    elif status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
        allowed = _allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
    return problem_response(
        request.url.path,
        status=status,
        title=phrase,
        slug=re.sub(r"[^a-z0-9]+", "-", phrase.lower()).strip("-"),
        detail=detail,
        headers=headers,
    )


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path. Starlette's own ``Allow`` names only the
    route that matched the path first (``POST`` for ``/v1/searches``, whose ``GET`` is another
    route), so each method is probed against the whole router."""
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        probe = {
            "type": "http",
            "method": method,
            "path": request.scope["path"],
            "root_path": request.scope.get("root_path", ""),
            "headers": [],
            "query_string": b"",
        }
        if any(route.matches(probe)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def internal_error(request_path: str) -> ProblemResponse:
    detail = "the server failed to answer this request; it was logged, please retry later"
    return from_problem(request_path, Internal(detail))


async def _on_database_down(request: Request, exc: Exception) -> ProblemResponse:
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    detail = "the database does not answer right now; retry shortly"
    return from_problem(request.url.path, Unavailable(detail, retry_after=5))


async def _on_unexpected(request: Request, exc: Exception) -> ProblemResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return internal_error(request.url.path)


def install(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(HSSLError, _on_hssl_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(OperationalError, _on_database_down)
    app.add_exception_handler(InterfaceError, _on_database_down)
    app.add_exception_handler(Exception, _on_unexpected)
