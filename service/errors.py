"""Errors the API answers as RFC 9457 problem+json; each carries its HTTP status and title."""

from __future__ import annotations

from training.errors import HSSLError


class Problem(HSSLError):
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
