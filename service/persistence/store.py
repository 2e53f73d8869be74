"""Tenants, keys, searches, their events and trials. All SQL lives in this wing: here, the job
queue in ``queue``, run claims in ``runs``, the status read in ``reads``. Functions take a
Session opened by ``session_scope``; one call is one step of a transaction the caller owns."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.errors import Conflict, NotFound, Problem, QuotaExceeded
from service.persistence.models import ApiKey, Job, Search, SearchEvent, SearchTrial, Tenant, utcnow
from service.statuses import ACTIVE, FINAL, SearchStatus

KEY_PREFIX = "hssl_"


# ---- tenants and keys ------------------------------------------------------------------
def create_tenant(
    s: Session, name: str, *, max_concurrent: int, max_trials: int, max_runs: int = 16
) -> Tenant:
    if s.scalar(select(Tenant).where(Tenant.name == name)) is not None:
        raise Conflict(f"tenant {name!r} already exists")
    tenant = Tenant(
        name=name,
        max_concurrent_searches=max_concurrent,
        max_trials_per_search=max_trials,
        max_concurrent_runs=max_runs,
    )
    s.add(tenant)
    s.flush()
    return tenant


def tenant_by_name(s: Session, name: str) -> Tenant | None:
    return s.scalar(select(Tenant).where(Tenant.name == name))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(s: Session, tenant: Tenant, name: str = "") -> tuple[str, ApiKey]:
    """A new key ``hssl_<prefix>_<secret>``; only its hash is stored. Returns the plaintext."""
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(tenant_id=tenant.id, prefix=prefix, key_hash=hash_key(key), name=name)
    s.add(row)
    s.flush()
    return key, row


def revoke_api_key(s: Session, prefix: str) -> int:
    result = s.execute(
        update(ApiKey)
        .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return result.rowcount


def authenticate(s: Session, key: str) -> Tenant | None:
    """The tenant of a live key, comparing hashes in constant time. One query (the keys of
    the prefix with their tenant): it runs on every request."""
    parts = key.split("_")
    if len(parts) < 3 or not key.startswith(KEY_PREFIX):
        return None
    digest = hash_key(key)
    rows = s.execute(
        select(ApiKey.key_hash, ApiKey.revoked_at, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.prefix == parts[1])
    ).all()
    for key_hash, revoked_at, tenant in rows:
        if hmac.compare_digest(key_hash, digest) and revoked_at is None:
            return tenant
    return None


# ---- searches --------------------------------------------------------------------------
def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def create_search(
    s: Session,
    tenant: Tenant,
    *,
    spec: dict[str, Any],
    name: str,
    study_name: str,
    planned: int,
    idempotency_key: str | None,
    queue: str,
    search_id: uuid.UUID | None = None,
) -> tuple[Search, bool]:
    """Insert a search, its job and its first event (one transaction); with an idempotency key
    the same body returns the first search (created=False), another body is a conflict.
    ``search_id`` lets the caller derive names from the id (the study) before the insert."""
    digest = spec_hash(spec)
    if idempotency_key:
        prior = s.scalar(
            select(Search).where(
                Search.tenant_id == tenant.id, Search.idempotency_key == idempotency_key
            )
        )
        if prior is not None:
            if prior.spec_hash != digest:
                raise Conflict(
                    "this Idempotency-Key was used with a different body; "
                    "use a new key for a new search"
                )
            return prior, False
    s.get(Tenant, tenant.id, with_for_update=True)  # serialise quota checks per tenant (PG)
    active = s.scalar(
        select(func.count())
        .select_from(Search)
        .where(Search.tenant_id == tenant.id, Search.status.in_(ACTIVE))
    )
    if active >= tenant.max_concurrent_searches:
        raise QuotaExceeded(
            f"{active} searches are active, the quota is "
            f"{tenant.max_concurrent_searches}; wait for one or cancel one"
        )
    if planned > tenant.max_trials_per_search:
        raise QuotaExceeded(
            f"the search plans {planned} runs, the quota is "
            f"{tenant.max_trials_per_search} per search; shrink the budget"
        )
    search = Search(
        id=search_id or uuid.uuid4(),
        tenant_id=tenant.id,
        name=name,
        spec=spec,
        spec_hash=digest,
        idempotency_key=idempotency_key,
        study_name=study_name,
        planned=planned,
    )
    s.add(search)
    s.flush()
    s.add(Job(search_id=search.id, queue=queue))
    add_event(s, search.id, "search.queued", {"planned": planned})
    return search, True


def get_search(s: Session, tenant_id: uuid.UUID | None, search_id: uuid.UUID) -> Search:
    """A search of this tenant (None = any tenant, for workers); others' are not found."""
    search = s.get(Search, search_id)
    if search is None or (tenant_id is not None and search.tenant_id != tenant_id):
        raise NotFound(f"no search {search_id}")
    return search


def list_searches(
    s: Session,
    tenant_id: uuid.UUID,
    *,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Search], str | None]:
    """Newest first, keyset-paginated by (created_at, id)."""
    query = select(Search).where(Search.tenant_id == tenant_id)
    if status:
        query = query.where(Search.status == status)
    if cursor:
        created, sid = _decode_cursor(cursor)
        query = query.where(
            (Search.created_at < created) | ((Search.created_at == created) & (Search.id < sid))
        )
    rows = s.scalars(
        query.order_by(Search.created_at.desc(), Search.id.desc()).limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = list(rows[:limit])
    return rows, _encode_cursor(rows[-1]) if more and rows else None


def _encode_cursor(search: Search) -> str:
    raw = f"{search.created_at.isoformat()}|{search.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, sid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(created), uuid.UUID(sid)
    except (ValueError, UnicodeDecodeError):
        raise Problem("invalid cursor; pass the next_cursor of the previous page") from None


def request_cancel(s: Session, tenant_id: uuid.UUID, search_id: uuid.UUID) -> Search:
    search = get_search(s, tenant_id, search_id)
    if search.status == SearchStatus.QUEUED:
        set_status(s, search, SearchStatus.CANCELLED)
    elif search.status == SearchStatus.RUNNING:
        search.status = SearchStatus.CANCELLING
        add_event(s, search.id, "search.cancelling", {})
    return search


def cancel_requested(s: Session, search_id: uuid.UUID) -> bool:
    """Should the search's running shards stop: cancelled, or failed by one of them?"""
    return s.scalar(select(Search.status).where(Search.id == search_id)) in (
        SearchStatus.CANCELLING,
        SearchStatus.CANCELLED,
        SearchStatus.FAILED,
    )


def set_status(s: Session, search: Search, status: str, error: str | None = None) -> None:
    search.status = status
    if status == SearchStatus.RUNNING and search.started_at is None:
        search.started_at = utcnow()
    if status in FINAL:
        search.finished_at = utcnow()
    search.error = error
    add_event(s, search.id, f"search.{status}", {"error": error} if error else {})


def save_trial(s: Session, search: Search, trial: dict[str, Any]) -> None:
    """Upsert one finished trial and the search's progress counts."""
    row = s.scalar(
        select(SearchTrial).where(
            SearchTrial.search_id == search.id, SearchTrial.number == trial["number"]
        )
    )
    if row is None:
        row = SearchTrial(search_id=search.id, number=trial["number"])
        s.add(row)
    row.label, row.seed, row.state = trial["label"], trial["seed"], trial["state"]
    row.values, row.attrs, row.updated_at = trial.get("values"), trial["attrs"], utcnow()
    s.flush()
    states = s.execute(
        select(SearchTrial.state, func.count())
        .where(SearchTrial.search_id == search.id)
        .group_by(SearchTrial.state)
    ).all()
    counts = dict(states)
    search.finished = sum(counts.values())
    search.failed = counts.get("FAIL", 0) + counts.get("PRUNED", 0)


def save_results(
    s: Session, search: Search, ranking: dict[str, Any], recommendation: dict[str, Any] | None
) -> None:
    search.ranking = ranking
    search.recommendation = recommendation
    heads = [h for h in ranking.get("heads", []) if h.get("n")]
    search.best = heads[0] if heads else None


def list_trials(s: Session, search: Search, *, limit: int, after: int) -> list[SearchTrial]:
    return list(
        s.scalars(
            select(SearchTrial)
            .where(SearchTrial.search_id == search.id, SearchTrial.number > after)
            .order_by(SearchTrial.number)
            .limit(limit)
        )
    )


# ---- events ----------------------------------------------------------------------------
def add_event(s: Session, search_id: uuid.UUID, kind: str, data: dict[str, Any]) -> None:
    s.add(SearchEvent(search_id=search_id, kind=kind, data=data))


def events_after(s: Session, search_id: uuid.UUID, after: int, limit: int = 100):
    return list(
        s.scalars(
            select(SearchEvent)
            .where(SearchEvent.search_id == search_id, SearchEvent.id > after)
            .order_by(SearchEvent.id)
            .limit(limit)
        )
    )


def counts_by_status(s: Session) -> dict[str, int]:
    return dict(s.execute(select(Search.status, func.count()).group_by(Search.status)).all())


def metrics_snapshot(s: Session) -> dict[str, Any]:
    """What ``/metrics`` reads from our tables (the queue depth is ``queue.queue_depth``):
    searches by status, trials by state, and the count and sum of the finished trials' wall
    times (attrs ``wall_time_s``)."""
    trials = dict(
        s.execute(select(SearchTrial.state, func.count()).group_by(SearchTrial.state)).all()
    )
    wall = SearchTrial.attrs["wall_time_s"].as_float()
    count, total = s.execute(select(func.count(wall), func.coalesce(func.sum(wall), 0.0))).one()
    return {
        "searches": counts_by_status(s),
        "trials": trials,
        "trial_seconds_count": int(count or 0),
        "trial_seconds_sum": float(total or 0.0),
    }
