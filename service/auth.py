"""``Authorization: Bearer <key>`` → the key's tenant, and a per-key rate limit.

The key is looked up (hash, constant-time compare) in its own short transaction. The rate
limit is a token bucket per key held in this process's memory: ``rate_limit_per_minute``
requests a minute, bursts up to that many; an empty bucket answers 429 with ``Retry-After``.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service import store
from service.db import session_scope
from service.errors import RateLimited, Unauthorized
from service.models import Tenant

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


def current_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Tenant:
    """The authenticated tenant (a detached row), after the key's rate limit."""
    if credentials is None:
        raise Unauthorized("send your API key as 'Authorization: Bearer hssl_...'")
    key = credentials.credentials
    state = request.app.state
    with session_scope(state.engine()) as s:
        tenant = store.authenticate(s, key)
    if tenant is None:
        raise Unauthorized("the API key is unknown or revoked; ask an admin for a new one")
    retry_after = state.rate_limiter.hit(store.hash_key(key))
    if retry_after is not None:
        per_minute = state.settings.rate_limit_per_minute
        raise RateLimited(
            f"more than {per_minute} requests a minute with this key; retry after {retry_after} s",
            retry_after=retry_after,
        )
    return tenant


TenantDep = Annotated[Tenant, Depends(current_tenant)]
