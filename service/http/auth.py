"""``Authorization: Bearer <key>`` → the key's tenant, and a per-key rate limit.

A key checked in the last ``HSSL_KEY_CACHE_S`` seconds (5 by default, at most 5) is answered
from this process's memory (:class:`KeyCache`: key hash → tenant, at most 10 000 keys, least
recently used dropped first), so such a request opens no database session for its key: its
route's read is its only one. Another key is looked up (hash, constant-time compare) in its own
short transaction, in a worker thread. A revoke committed in this process (any committed UPDATE
or DELETE on ``api_keys`` through a Session, as ``store.revoke_api_key``) makes every cache of
the process forget every key at once; one committed by another process (``hssl keys revoke``)
is refused here within ``HSSL_KEY_CACHE_S``. The tenant row (its quotas) is cached with the key,
so a change to it takes effect within that time too. ``HSSL_KEY_CACHE_S=0`` checks every
request in the database.

The rate limit is a token bucket per key held in this process's memory:
``rate_limit_per_minute`` requests a minute, bursts up to that many; an empty bucket answers
429 with ``Retry-After``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import event
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.errors import RateLimited, Unauthorized
from service.persistence import store
from service.persistence.db import session_scope
from service.persistence.models import ApiKey, Tenant

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="an API key from `hssl keys create`, sent as `Authorization: Bearer hssl_...`",
)


class RateLimiter:
    """Token buckets keyed by the key's hash; thread-safe; idle full buckets are dropped."""

    def __init__(self, per_minute: int, *, max_keys: int = 10_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, now: float | None = None) -> int | None:
        """Take one token; None when allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                if len(self._buckets) > self.max_keys:
                    self._prune(now)
                return None
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))

    def _prune(self, now: float) -> None:
        full = [
            k
            for k, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.rate >= self.capacity
        ]
        for k in full:
            del self._buckets[k]


class KeyCache:
    """Key hash → (tenant, when it was read, generation), bounded, least recently used out
    first; thread-safe. An entry is good for ``ttl_s`` seconds and only while no key was
    changed in this process since it was read (:func:`_keys_changed` bumps the generation)."""

    def __init__(self, ttl_s: float, *, max_keys: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._entries: OrderedDict[str, tuple[Tenant, float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str, now: float | None = None) -> Tenant | None:
        now = time.monotonic() if now is None else now
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            tenant, read_at, generation = entry
            if now - read_at >= self.ttl_s or generation != _generation:
                del self._entries[digest]
                return None
            self._entries.move_to_end(digest)
            return tenant

    def put(self, digest: str, tenant: Tenant, read_at: float, generation: int) -> None:
        """Remember a tenant read at ``read_at`` (monotonic) in key ``generation``."""
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._entries[digest] = (tenant, read_at, generation)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_keys:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


# Bumped when a transaction that changed api_keys commits in this process: every KeyCache
# entry read before is stale from then on (a revoke takes effect at once here). Two commits
# racing may bump it once: either way every older entry is stale.
_generation = 0
_CHANGED = "hssl_api_keys_changed"
KEYS_TABLE = ApiKey.__tablename__


@event.listens_for(Session, "do_orm_execute")
def _note_key_statement(state: Any) -> None:
    """An UPDATE or DELETE on api_keys through a Session (``store.revoke_api_key``)."""
    table = getattr(state.statement, "table", None)
    if (state.is_update or state.is_delete) and getattr(table, "name", None) == KEYS_TABLE:
        state.session.info[_CHANGED] = True


@event.listens_for(Session, "before_flush")
def _note_key_rows(session: Session, _context: Any, _instances: Any) -> None:
    """An ApiKey row changed or deleted through the unit of work."""
    if any(isinstance(row, ApiKey) for row in (*session.dirty, *session.deleted)):
        session.info[_CHANGED] = True


@event.listens_for(Session, "after_commit")
def _keys_changed(session: Session) -> None:
    global _generation
    if session.info.pop(_CHANGED, False):
        _generation += 1


@event.listens_for(Session, "after_rollback")
def _keys_unchanged(session: Session) -> None:
    session.info.pop(_CHANGED, None)


async def current_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Tenant:
    """The authenticated tenant (a detached row, shared read-only), after the key's rate
    limit. The database is asked only when the key is not in the cache."""
    if credentials is None:
        raise Unauthorized("send your API key as 'Authorization: Bearer hssl_...'")
    key = credentials.credentials
    state = request.app.state
    digest = store.hash_key(key)
    tenant = state.key_cache.get(digest)
    if tenant is None:
        read_at, generation = time.monotonic(), _generation
        tenant = await run_in_threadpool(_authenticate, state.engine(), key)
        if tenant is None:
            raise Unauthorized("the API key is unknown or revoked; ask an admin for a new one")
        state.key_cache.put(digest, tenant, read_at, generation)
    retry_after = state.rate_limiter.hit(digest)
    if retry_after is not None:
        per_minute = state.settings.rate_limit_per_minute
        raise RateLimited(
            f"more than {per_minute} requests a minute with this key; retry after {retry_after} s",
            retry_after=retry_after,
        )
    return tenant


def _authenticate(engine: Any, key: str) -> Tenant | None:
    with session_scope(engine) as s:
        return store.authenticate(s, key)


TenantDep = Annotated[Tenant, Depends(current_tenant)]
