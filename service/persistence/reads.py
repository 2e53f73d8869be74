"""The API's hot read: a search's status (``GET /v1/searches/{id}``), in SQLAlchemy Core.

Clients poll this route, so it reads only the columns the answer shows, with one prebuilt
statement on one pooled connection: no ORM session, no identity map, no JSON decoding of the
spec, ranking or recommendation. Measured in the API server on SQLite (``bench/api_cost.py``
and per-call CPU in the worker thread), the read costs about 0.6 ms of CPU against about 1.9 ms
for ``store.get_search`` in ``session_scope``. Every other read and every write stays in
:mod:`service.persistence.store`; SQL on our tables lives in the store modules and here.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Engine, Row, bindparam, func, select

from service.errors import NotFound
from service.persistence.models import Job, Search, SearchEvent, SearchRun
from service.statuses import JobStatus, RunStatus

# planned trials training now: claims held by a running shard job (service.persistence.runs)
RUNNING = (
    select(func.coalesce(func.sum(SearchRun.weight), 0))
    .join(Job, Job.id == SearchRun.job_id)
    .where(SearchRun.search_id == Search.id, SearchRun.status == RunStatus.RUNNING)
    .where(Job.status == JobStatus.RUNNING)
    .correlate(Search)
    .scalar_subquery()
    .label("running")
)

# the stage a staged search is in: its latest ``search.stage`` event (None for one stage)
STAGE = (
    select(SearchEvent.data)
    .where(SearchEvent.search_id == Search.id, SearchEvent.kind == "search.stage")
    .order_by(SearchEvent.id.desc())
    .limit(1)
    .correlate(Search)
    .scalar_subquery()
    .label("stage")
)

# what SearchResource shows (schemas.SearchResource.from_search reads these attributes)
STATUS = select(
    Search.id,
    Search.name,
    Search.status,
    Search.created_at,
    Search.started_at,
    Search.finished_at,
    Search.planned,
    Search.finished,
    Search.failed,
    RUNNING,
    STAGE,
    Search.best,
    Search.error,
).where(Search.id == bindparam("search_id"), Search.tenant_id == bindparam("tenant_id"))


def search_status(engine: Engine, tenant_id: uuid.UUID, search_id: uuid.UUID) -> Row:
    """The status columns of a search of this tenant; others' (and unknown ids) are not
    found, as in :func:`service.persistence.store.get_search`."""
    with engine.connect() as conn:
        row = conn.execute(STATUS, {"search_id": search_id, "tenant_id": tenant_id}).first()
    if row is None:
        raise NotFound(f"no search {search_id}")
    return row
