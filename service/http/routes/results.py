"""A search's trials, ranking and recommendation (the last two once it has them)."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

import yaml
from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import JSONResponse

from service.errors import NotReady
from service.http.deps import SessionDep, TenantDep
from service.http.routes import AUTH_PROBLEMS, problems
from service.http.schemas import RANKING_EXAMPLE, RECOMMENDATION_EXAMPLE, Trial, TrialPage
from service.persistence import store
from service.persistence.models import Search
from service.statuses import FINAL

router = APIRouter(prefix="/v1/searches/{search_id}", tags=["results"])
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


@router.get(
    "/trials",
    response_model=TrialPage,
    summary="The search's finished trials, by number",
    responses=problems(*AUTH_PROBLEMS, 404, 422),
)
def list_trials(
    s: SessionDep,
    tenant: TenantDep,
    search_id: uuid.UUID,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    after: Annotated[
        int, Query(ge=-1, le=2**31 - 1, description="trial number to start after")
    ] = -1,
) -> TrialPage:
    search = store.get_search(s, tenant.id, search_id)
    rows = store.list_trials(s, search, limit=limit, after=after)
    items = [Trial.from_row(r) for r in rows]
    return TrialPage(items=items, next_after=items[-1].number if len(items) == limit else None)


@router.get(
    "/ranking",
    summary="The ranking of the candidate heads",
    responses={
        200: {
            "description": "the ranking JSON (search.ranking)",
            "content": {"application/json": {"example": RANKING_EXAMPLE}},
        },
        **problems(*AUTH_PROBLEMS, 404, 409, 422, d409="the search has no ranking yet"),
    },
)
def get_ranking(s: SessionDep, tenant: TenantDep, search_id: uuid.UUID) -> JSONResponse:
    search = store.get_search(s, tenant.id, search_id)
    _require(search, search.ranking, "ranking")
    return JSONResponse(search.ranking)


@router.get(
    "/recommendation",
    summary="Download the recommendation (JSON or YAML)",
    responses={
        200: {
            "description": "the recommended head and how to train with it, as an attachment "
            "(YAML: pass it to `hssl train --config`)",
            "content": {
                "application/json": {"example": RECOMMENDATION_EXAMPLE},
                "application/yaml": {"example": yaml.safe_dump(RECOMMENDATION_EXAMPLE)},
            },
        },
        **problems(*AUTH_PROBLEMS, 404, 409, 422, d409="the search has no recommendation yet"),
    },
)
def get_recommendation(
    s: SessionDep,
    tenant: TenantDep,
    search_id: uuid.UUID,
    format: Annotated[
        Literal["json", "yaml"] | None,
        Query(description="default json; `Accept: application/yaml` also selects yaml"),
    ] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    search = store.get_search(s, tenant.id, search_id)
    _require(search, search.recommendation, "recommendation")
    rec = search.recommendation
    fmt = format or ("yaml" if _wants_yaml(accept) else "json")
    if fmt == "yaml":
        body, media = yaml.safe_dump(rec, sort_keys=False, allow_unicode=True), "application/yaml"
    else:
        body, media = json.dumps(rec, indent=2) + "\n", "application/json"
    disposition = f'attachment; filename="recommendation-{search_id}.{fmt}"'
    return Response(body, media_type=media, headers={"Content-Disposition": disposition})


def _require(search: Search, value: Any, what: str) -> None:
    if value is not None:
        return
    if search.status in FINAL:
        why = f"the search ended {search.status} without one"
        if search.error:
            why += f" ({search.error})"
    else:
        why = f"the search is {search.status}; it has one when it completes"
    raise NotReady(f"no {what} yet: {why}", search_status=search.status)


def _wants_yaml(accept: str | None) -> bool:
    if not accept:
        return False
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return any(t in YAML_TYPES for t in types) and "application/json" not in types[:1]
