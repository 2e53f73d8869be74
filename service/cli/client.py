"""A small HTTP client of the hssl-search API (httpx), used by the ``hssl search`` CLI."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from training.errors import HSSLError

FINAL_EVENTS = ("search.completed", "search.failed", "search.cancelled")


class ApiError(HSSLError):
    """A problem+json answer, as one line: '<status> <title>: <detail>'."""


@dataclass
class Event:
    id: int
    kind: str
    data: dict[str, Any]


class Client:
    def __init__(self, url: str, key: str | None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(
                f"cannot reach {self.http.base_url}: {exc}; is `hssl serve` running "
                "and HSSL_URL right?"
            ) from None
        if response.status_code >= 400:
            raise ApiError(problem_line(response))
        return response

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.request("POST", "/v1/searches", json=spec, headers=headers).json()

    def get(self, search_id: str) -> dict:
        return self.request("GET", f"/v1/searches/{search_id}").json()

    def list(self, status: str | None = None, limit: int = 20) -> Iterator[dict]:
        cursor = None
        while True:
            params = {"limit": limit, **({"status": status} if status else {})}
            if cursor:
                params["cursor"] = cursor
            page = self.request("GET", "/v1/searches", params=params).json()
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, search_id: str) -> dict:
        return self.request("POST", f"/v1/searches/{search_id}/cancel").json()

    def ranking(self, search_id: str) -> dict:
        return self.request("GET", f"/v1/searches/{search_id}/ranking").json()

    def recommendation(self, search_id: str, fmt: str = "json") -> bytes:
        path = f"/v1/searches/{search_id}/recommendation"
        return self.request("GET", path, params={"format": fmt}).content

    def events(self, search_id: str, retries: int = 20) -> Iterator[Event]:
        """The search's events until a final one; reconnects with Last-Event-ID."""
        last_id: int | None = None
        failures = 0
        while True:
            headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
            try:
                with self.http.stream(
                    "GET", f"/v1/searches/{search_id}/events", headers=headers, timeout=None
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise ApiError(problem_line(response))
                    for event in parse_sse(response.iter_lines()):
                        last_id, failures = event.id, 0
                        yield event
                        if event.kind in FINAL_EVENTS:
                            return
            except httpx.HTTPError as exc:
                failures += 1
                if failures > retries:
                    raise ApiError(f"lost the event stream: {exc}") from None
                time.sleep(min(2.0 * failures, 10.0))


def parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Server-Sent Events: 'id:', 'event:', 'data:' lines, a blank line ends an event."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                yield Event(
                    int(fields.get("id", "0")),
                    fields.get("event", "message"),
                    json.loads(fields["data"]),
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = (
                fields[name] + "\n" + value if name == "data" and name in fields else value
            )


def problem_line(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} {response.reason_phrase}"
    detail = body.get("detail") or ""
    errors = body.get("errors") or []
    if errors:
        detail = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in errors)
    return f"{response.status_code} {body.get('title', response.reason_phrase)}: {detail}".strip()
