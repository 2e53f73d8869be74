"""The request guard (pure ASGI, outermost of ours):

- a body is read in full before the app sees it, up to ``max_body_bytes`` (a larger
  ``Content-Length`` or a longer stream is 413); a non-empty body must be JSON (else 415);
- an error nothing else handled becomes a logged 500 problem (when the answer has not begun);
- each answer is counted for ``/metrics`` by method, route template and status.
"""

from __future__ import annotations

import email.message
import logging
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, UnsupportedMediaType
from service.http.metrics import RequestCounter
from service.http.problems import from_problem, internal_error

log = logging.getLogger("service.api")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


class RequestGuard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, counter: RequestCounter) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: dict[str, Any] = {"code": None}

        async def send_tracking(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if scope["method"] in BODY_METHODS:
                refusal = await self._read_body(scope, receive)
                if isinstance(refusal, bytes):
                    receive = _replay(refusal, receive)
                else:
                    await refusal(scope, receive, send_tracking)
                    return
            await self.app(scope, receive, send_tracking)
        except Exception:
            if status["code"] is not None:
                raise  # mid-stream: nothing sane left to send; the server closes the connection
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            await internal_error(scope["path"])(scope, receive, send_tracking)
        finally:
            self.counter.add(scope, status["code"] or 500)

    async def _read_body(self, scope: Scope, receive: Receive):
        """The whole body, or the problem response refusing it."""
        headers = Headers(scope=scope)
        limit = self.max_body_bytes
        too_large = from_problem(
            scope["path"],
            PayloadTooLarge(
                f"the body is larger than {limit} bytes; a search spec is a few KB",
                max_bytes=limit,
            ),
        )
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and not is_json(headers.get("content-type")):
            got = headers.get("content-type") or "none"
            return from_problem(
                scope["path"],
                UnsupportedMediaType(
                    f"the body must be application/json (got {got})",
                    accepted=["application/json"],
                ),
            )
        return body


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
