"""Response bodies of the HTTP API (the request body is ``search.spec.SearchSpec``).

Each model carries an example, so ``/openapi.json`` documents every answer; ``from_search``
turns a stored row into the public resource (times always in UTC, links relative).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Row

from service.errors import InvalidSpec
from service.persistence.models import Search, SearchTrial
from service.statuses import SearchStatus

STATUSES: tuple[str, ...] = tuple(s.value for s in SearchStatus)
Status = Literal[STATUSES]  # type: ignore[valid-type]  (from the one SearchStatus enum)
EXAMPLE_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
PROBLEM_BASE = "https://hssl-search.dev/problems/"


def _example(**values: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [values]})


class Progress(BaseModel):
    model_config = _example(planned=10, running=3, finished=4, failed=1)
    planned: int = Field(description="trials the search plans (candidates x seeds, or trials)")
    running: int | None = Field(
        None,
        description="planned trials training now, over every worker (a joint run counts for all "
        "its candidates); given by GET /v1/searches/{id}, null in lists",
    )
    finished: int = Field(description="trials that ended (any state)")
    failed: int = Field(description="trials that failed or were pruned")
    stage: dict[str, Any] | None = Field(
        None,
        description="a staged search's current stage: stage (1 screen, 2 confirm), of, name, "
        "planned trials of the stage, seeds, and (stage 2) the kept and screened-out heads; "
        "given by GET /v1/searches/{id}, null otherwise",
        examples=[{"stage": 2, "of": 2, "name": "confirm", "planned": 6, "kept": ["mlp-d1-nores"]}],
    )


def _links(search_id: uuid.UUID | str) -> dict[str, str]:
    base = f"/v1/searches/{search_id}"
    return {
        "self": base,
        "trials": f"{base}/trials",
        "ranking": f"{base}/ranking",
        "recommendation": f"{base}/recommendation",
        "events": f"{base}/events",
        "cancel": f"{base}/cancel",
    }


class Links(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True, json_schema_extra={"examples": [_links(EXAMPLE_ID)]}
    )
    self_: str = Field(alias="self", serialization_alias="self")
    trials: str
    ranking: str
    recommendation: str
    events: str
    cancel: str


BEST_EXAMPLE = {
    "rank": 1,
    "score": 1.0,
    "label": "convnext-d2-k5",
    "head": {"family": "convnext", "depth": 2, "kernel": 5},
    "n": 1,
    "failed": 0,
    "mean": {"d_kl": 0.41, "d_cka": 0.22},
}

SEARCH_EXAMPLE: dict[str, Any] = {
    "id": EXAMPLE_ID,
    "name": "resnet18-heads",
    "status": "running",
    "created_at": "2026-01-05T10:00:00Z",
    "started_at": "2026-01-05T10:00:02Z",
    "finished_at": None,
    "progress": {"planned": 10, "running": 3, "finished": 4, "failed": 1},
    "best": None,
    "error": None,
    "links": _links(EXAMPLE_ID),
}


class SearchResource(BaseModel):
    """A submitted search: its state, progress, best head so far and where to read more."""

    model_config = ConfigDict(json_schema_extra={"examples": [SEARCH_EXAMPLE]})
    id: uuid.UUID
    name: str
    status: Status
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress
    best: dict[str, Any] | None = Field(
        None, description="the top-ranked head once the search has a ranking"
    )
    error: str | None = Field(None, description="why the search failed (one line)")
    links: Links

    @classmethod
    def from_search(cls, search: Search | Row) -> SearchResource:
        """From a ``Search`` or a row with its columns
        (``service.persistence.reads.search_status``)."""
        return cls(
            id=search.id,
            name=search.name,
            status=search.status,
            created_at=utc(search.created_at),
            started_at=utc(search.started_at),
            finished_at=utc(search.finished_at),
            progress=Progress(
                planned=search.planned,
                # the status read counts it; a queued search has none; lists leave it out
                running=0 if search.status == "queued" else getattr(search, "running", None),
                finished=search.finished,
                failed=search.failed,
                stage=getattr(search, "stage", None),
            ),
            best=search.best,
            error=search.error,
            links=Links.model_validate(_links(search.id)),
        )


class SearchPage(BaseModel):
    """One page of the tenant's searches, newest first."""

    model_config = _example(items=[SEARCH_EXAMPLE], next_cursor="MjAyNi0wMS0wNVQxMDow...")
    items: list[SearchResource]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page")


TRIAL_EXAMPLE: dict[str, Any] = {
    "number": 3,
    "label": "convnext-d2-k5",
    "seed": 0,
    "state": "COMPLETE",
    "values": [0.41, 0.22],
    "attrs": {"epochs_done": 1, "wall_time_s": 12.5, "final": {"knn_cls": 0.61}},
}


class Trial(BaseModel):
    """One finished trial of the search's study."""

    model_config = ConfigDict(json_schema_extra={"examples": [TRIAL_EXAMPLE]})
    number: int
    label: str
    seed: int
    state: str = Field(description="COMPLETE, PRUNED or FAIL")
    values: list[float | None] | None = Field(None, description="objective values, in order")
    attrs: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_row(cls, row: SearchTrial) -> Trial:
        return cls(
            number=row.number,
            label=row.label,
            seed=row.seed,
            state=row.state,
            values=row.values,
            attrs=row.attrs or {},
        )


class TrialPage(BaseModel):
    model_config = _example(items=[TRIAL_EXAMPLE], next_after=3)
    items: list[Trial]
    next_after: int | None = Field(None, description="pass as ?after= for the next page")


class FieldError(BaseModel):
    model_config = _example(field="budget.epochs", message="Input should be >= 1")
    field: str = Field(description="dotted path of the offending field ('' = the whole body)")
    message: str


PROBLEM_EXAMPLE: dict[str, Any] = {
    "type": PROBLEM_BASE + InvalidSpec.slug,
    "title": InvalidSpec.title,
    "status": 422,
    "detail": "base.name: unknown timm model 'resnet19'; did you mean: resnet18, resnet18d",
    "instance": "/v1/searches",
    "errors": [
        {
            "field": "base.name",
            "message": "unknown timm model 'resnet19'; did you mean: resnet18, resnet18d",
        }
    ],
}


class Problem(BaseModel):
    """RFC 9457 problem details (media type application/problem+json)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [PROBLEM_EXAMPLE]})
    type: str = Field(description="a URI naming the kind of problem")
    title: str
    status: int
    detail: str
    instance: str = Field(description="the request path")
    errors: list[FieldError] | None = Field(None, description="422 only: each invalid field")


class Health(BaseModel):
    model_config = _example(status="ok")
    status: Literal["ok", "ready"]


RANKING_EXAMPLE: dict[str, Any] = {
    "objectives": ["d_kl", "d_cka"],
    "rule": "per objective, average ranks of the heads' means (1 = largest); ...",
    "heads": [BEST_EXAMPLE],
    "baseline": None,
    "pareto": ["convnext-d2-k5"],
    "correlations": {},
}

RECOMMENDATION_EXAMPLE: dict[str, Any] = {
    "schema": "hssl-search/recommendation/v1",
    "head": {"family": "convnext", "depth": 2, "kernel": 5},
    "head_label": "convnext-d2-k5",
    "base": {"name": "resnet18", "img_size": 32},
    "seed": 0,
    "strategy": "joint",
    "commands": {"train": "hssl train --config recommendation.yaml --data ..."},
}


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
