"""A search's events as Server-Sent Events, resumable with ``Last-Event-ID``.

The stream polls ``search_events`` (the worker's writes) every ``sse_poll_s`` in a worker thread,
sends a comment line every ``sse_ping_s`` while nothing happens (keeps proxies from closing it),
and ends after the search's final event (or at once when that was already delivered).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine

from service.http.deps import EngineDep, TenantDep
from service.http.routes import AUTH_PROBLEMS, problems
from service.persistence import store
from service.persistence.db import session_scope
from service.persistence.models import SearchEvent
from service.statuses import FINAL

router = APIRouter(prefix="/v1/searches/{search_id}", tags=["events"])
FINAL_EVENTS = frozenset(f"search.{status}" for status in FINAL)
BATCH = 100
EXAMPLE = (
    'id: 7\nevent: trial.finished\ndata: {"number":0,"label":"convnext-d2-k5","seed":0,'
    '"state":"COMPLETE","values":[0.41,0.22],"attrs":{}}\n\n'
    ": ping\n\n"
    "id: 9\nevent: search.completed\ndata: {}\n\n"
)
# One event of the stream: before OpenAPI 3.2's `itemSchema`, the `schema` of a
# text/event-stream describes each event (its `id`, `event` and `data` fields), not the text.
EVENT_SCHEMA = {
    "type": "object",
    "description": "one event; comment lines (`: ping`) only keep the connection open",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "the event's id: send the last one as `Last-Event-ID` to resume",
        },
        "event": {"type": "string", "description": "the kind, e.g. `trial.finished`"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "the event's JSON object, on one line",
        },
    },
}


def sse(event: SearchEvent) -> str:
    data = json.dumps(event.data, separators=(",", ":"), default=str)
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"


@router.get(
    "/events",
    summary="Follow the search's events (text/event-stream)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "events `search.*` (`search.stage`: a staged search enters a "
            "stage), `trial.started`, `trial.progress` (a running "
            "run's epoch, step and images/s, every few seconds), `trial.reported` (each "
            "evaluated epoch), `trial.finished` until a final "
            "`search.completed|failed|cancelled`",
            "content": {"text/event-stream": {"schema": EVENT_SCHEMA, "example": EXAMPLE}},
        },
        **problems(*AUTH_PROBLEMS, 404, 422),
    },
)
async def follow_events(
    request: Request,
    engine: EngineDep,
    tenant: TenantDep,
    search_id: uuid.UUID,
    last_event_id: Annotated[
        int | None,
        Header(
            ge=0,
            le=2**63 - 1,
            description="resume after this event id (EventSource sends it itself)",
        ),
    ] = None,
) -> StreamingResponse:
    def first() -> tuple[str, list[SearchEvent]]:
        with session_scope(engine) as s:
            search = store.get_search(s, tenant.id, search_id)
            return search.status, store.events_after(s, search.id, last_event_id or 0, BATCH)

    status, rows = await anyio.to_thread.run_sync(first)
    stream = _stream(request, engine, search_id, last_event_id or 0, rows, status in FINAL)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


async def _stream(
    request: Request,
    engine: Engine,
    search_id: uuid.UUID,
    after: int,
    rows: list[SearchEvent],
    ended: bool,
) -> AsyncIterator[str]:
    poll_s: float = request.app.state.sse_poll_s
    ping_s: float = request.app.state.sse_ping_s
    if ended and not rows:
        return  # the search had ended and its events were all delivered already

    def fetch(last: int) -> list[SearchEvent]:
        with session_scope(engine) as s:
            return store.events_after(s, search_id, last, BATCH)

    quiet = 0.0
    while True:
        for event in rows:
            yield sse(event)
            after = event.id
            if event.kind in FINAL_EVENTS:
                return
        if rows:
            quiet = 0.0
            if len(rows) == BATCH:
                rows = await anyio.to_thread.run_sync(fetch, after)
                continue
            if ended:
                return  # the search had ended before we started: nothing more will come
        elif quiet >= ping_s:
            quiet = 0.0
            yield ": ping\n\n"
        await anyio.sleep(poll_s)
        quiet += poll_s
        if await request.is_disconnected():
            return
        rows = await anyio.to_thread.run_sync(fetch, after)
