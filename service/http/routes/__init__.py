"""The API's routers (thin: parse → one store or service call → a schema) and their OpenAPI
problem entries; what a route asks FastAPI for is in ``service.http.deps``."""

from __future__ import annotations

import http
from collections.abc import Mapping
from typing import Any

from service.errors import Problem, documented
from service.http.problems import MEDIA_TYPE
from service.http.schemas import PROBLEM_BASE

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_DETAILS = {
    400: "the body is not valid JSON: Expecting value: line 1 column 1 (char 0)",
    401: "send your API key as 'Authorization: Bearer hssl_...'",
    404: "no search 0f8fad5b-d9cb-469f-a165-70867728950e",
    409: "no ranking yet: the search is running",
    413: "the body is larger than 65536 bytes; a search spec is a few KB",
    415: "the body must be application/json (got text/plain)",
    422: "limit: Input should be less than or equal to 100",
    429: "more than 600 requests a minute with this key; retry after 2 s",
    503: "the database does not answer right now; retry shortly",
}


def problems(
    *codes: int, kinds: Mapping[int, type[Problem]] | None = None, **descriptions: str
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries: problem+json with the shared schema and an example of
    the problem the route answers (``service.errors.documented``, or ``kinds[code]``)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        phrase = http.HTTPStatus(code).phrase
        kind = (kinds or {}).get(code) or documented(code)
        example = {
            "type": PROBLEM_BASE + kind.slug,
            "title": kind.title,
            "status": code,
            "detail": _DETAILS.get(code, phrase),
            "instance": "/v1/searches",
        }
        out[code] = {
            "description": descriptions.get(f"d{code}", phrase),
            "content": {MEDIA_TYPE: {"schema": PROBLEM_REF, "example": example}},
        }
    return out


# every /v1 route: the key is checked (and rate-limited; in the database unless checked in the
# last HSSL_KEY_CACHE_S, service.http.auth), 503 when the database is down
AUTH_PROBLEMS = (401, 429, 503)
# any POST with a body passes the request guard first (service.http.middleware), used or not
BODY_PROBLEMS = (413, 415)
