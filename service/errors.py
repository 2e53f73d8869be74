"""Errors the API answers as RFC 9457 problem+json; each carries its HTTP status, title and
slug (the last part of its ``type`` URI). The one table of the API's problems: the handlers
answer with these classes and the OpenAPI documents them (``documented``). A ``Problem`` is a
service error, not the engine's: the engine's bad input (``training.errors.HSSLError``) is
answered as :class:`InvalidInput`."""

from __future__ import annotations


class Problem(Exception):
    status = 400
    title = "Bad request"
    slug = "bad-request"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class Unauthorized(Problem):
    status, title, slug = 401, "Missing or invalid API key", "unauthorized"


class NotFound(Problem):
    status, title, slug = 404, "Not found", "not-found"


class Conflict(Problem):
    status, title, slug = 409, "Conflict", "conflict"


class QuotaExceeded(Problem):
    status, title, slug = 429, "Quota exceeded", "quota-exceeded"


class RateLimited(Problem):
    status, title, slug = 429, "Too many requests", "rate-limited"


class InvalidSpec(Problem):
    status, title, slug = 422, "Invalid search spec", "invalid-spec"


# problems only the HTTP layer raises
class MalformedBody(Problem):
    status, title, slug = 400, "Malformed JSON body", "malformed-json"


class PayloadTooLarge(Problem):
    status, title, slug = 413, "Request body too large", "payload-too-large"


class UnsupportedMediaType(Problem):
    status, title, slug = 415, "Unsupported media type", "unsupported-media-type"


class NotReady(Conflict):
    status, title, slug = 409, "Not ready yet", "not-ready"


class Unavailable(Problem):
    status, title, slug = 503, "Service unavailable", "unavailable"


class InvalidRequest(Problem):
    """A query, path or header parameter that fails validation (the body's own is
    :class:`InvalidSpec`)."""

    status, title, slug = 422, "Invalid request", "invalid-request"


class InvalidInput(Problem):
    """The engine refused an input (a ``training.errors.HSSLError`` that reached the API)."""

    status, title, slug = 422, "Invalid input", "invalid-input"


class Internal(Problem):
    status, title, slug = 500, "Internal server error", "internal"


# what a route's OpenAPI documents for a status unless it names another problem
DOCUMENTED: dict[int, type[Problem]] = {
    cls.status: cls
    for cls in (
        MalformedBody,
        Unauthorized,
        NotFound,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        InvalidRequest,
        RateLimited,
        Internal,
        Unavailable,
    )
}


def documented(status: int) -> type[Problem]:
    """The problem a route documents for ``status`` by default."""
    return DOCUMENTED.get(status, Problem)
