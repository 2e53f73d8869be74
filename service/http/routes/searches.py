"""Submit, list, read and cancel searches."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.errors import InvalidSpec
from service.http.deps import EngineDep, SessionDep, SettingsDep, TenantDep
from service.http.routes import AUTH_PROBLEMS, BODY_PROBLEMS, problems
from service.http.schemas import STATUSES, SearchPage, SearchResource, Status
from service.http.submission import MAX_IDEMPOTENCY_KEY, submit_search
from service.persistence import store
from service.persistence.db import session_scope
from service.persistence.reads import search_status

router = APIRouter(prefix="/v1/searches", tags=["searches"])

SPEC_EXAMPLE = {
    "name": "resnet18-heads",
    "base": {"name": "resnet18", "img_size": 32},
    "data": "synthetic",
    "space": {"families": ["convnext", "resnet"], "depths": [2]},
    "strategy": "joint",
    "objectives": ["d_kl", "d_cka"],
    "budget": {"epochs": 2, "seeds": 2},
}


@router.post(
    "",
    status_code=202,
    response_model=SearchResource,
    summary="Submit a search",
    response_description="Accepted: queued for a worker (Location names the new search)",
    responses=problems(
        400,
        *AUTH_PROBLEMS,
        *BODY_PROBLEMS,
        409,
        422,
        kinds={422: InvalidSpec},
        d409="this Idempotency-Key was used with a different body",
        d422="the spec is invalid (each field in `errors`)",
        d429="rate limited, or a quota (concurrent searches, runs per search) is exceeded",
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/SearchSpec"},
                    "example": SPEC_EXAMPLE,
                }
            },
        }
    },
)
async def create_search(
    request: Request,
    response: Response,
    tenant: TenantDep,
    settings: SettingsDep,
    engine: EngineDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="repeat a submission safely: the same key and body give the same "
            "search, the same key with another body is 409 (1 to 200 printable ASCII "
            "characters)",
            min_length=1,
            max_length=MAX_IDEMPOTENCY_KEY,
            # printable ASCII; no space at either end (HTTP strips those from a header value)
            pattern=r"^[!-~]([ -~]*[!-~])?$",
        ),
    ] = None,
) -> SearchResource:
    """Validate the spec (timm names, heads, data under the data root) and queue the search.
    The body is a `SearchSpec` (see its schema); `{}` takes every default."""
    body = await request.body()
    search, _created = await run_in_threadpool(
        submit_search,
        settings,
        engine,
        tenant,
        body,
        idempotency_key=idempotency_key,
        dispatcher=request.app.state.dispatcher,
    )
    response.headers["Location"] = f"/v1/searches/{search.id}"
    return SearchResource.from_search(search)


@router.get(
    "",
    response_model=SearchPage,
    summary="List your searches, newest first",
    responses=problems(400, *AUTH_PROBLEMS, 422),
)
def list_searches(
    s: SessionDep,
    tenant: TenantDep,
    status: Annotated[Status | None, Query(description=f"one of {', '.join(STATUSES)}")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None,
        Query(
            max_length=512,
            pattern=r"^[A-Za-z0-9_-]+={0,2}$",
            description="the next_cursor of the previous page (opaque, URL-safe base64)",
        ),
    ] = None,
) -> SearchPage:
    rows, next_cursor = store.list_searches(s, tenant.id, status=status, limit=limit, cursor=cursor)
    return SearchPage(items=[SearchResource.from_search(r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/{search_id}",
    response_model=SearchResource,
    summary="Read a search",
    responses=problems(*AUTH_PROBLEMS, 404, 422),
)
async def get_search(engine: EngineDep, tenant: TenantDep, search_id: uuid.UUID) -> SearchResource:
    # Clients poll this: one worker-thread hop for the read (a sync route takes two, the
    # second to validate the answer) and a Core read of the columns shown
    # (service.persistence.reads).
    row = await run_in_threadpool(search_status, engine, tenant.id, search_id)
    return SearchResource.from_search(row)


@router.post(
    "/{search_id}/cancel",
    status_code=202,
    response_model=SearchResource,
    summary="Cancel a search",
    response_description="Accepted: a queued search is cancelled now, a running one stops "
    "within one epoch (status cancelling, then cancelled)",
    responses=problems(*AUTH_PROBLEMS, *BODY_PROBLEMS, 404, 422),
)
def cancel_search(engine: EngineDep, tenant: TenantDep, search_id: uuid.UUID) -> SearchResource:
    with session_scope(engine) as s:  # a write: committed before the answer
        return SearchResource.from_search(store.request_cancel(s, tenant.id, search_id))
