"""The API's key cache (``service.http.auth.KeyCache``): a request whose key was checked in the
last ``key_cache_s`` seconds costs one database connection (its route's), not two; a revoke
committed in this process takes effect at once, one committed by another process within
``key_cache_s``; the cache is bounded and forgets nothing a rollback undid."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import event

from service.http import auth
from service.persistence import store
from service.persistence.db import engine_for, session_scope
from tests.api_helpers import assert_problem

REPO = Path(__file__).resolve().parent.parent
REVOKE = """
import sys
from service.persistence import store
from service.persistence.db import engine_for, session_scope
with session_scope(engine_for(sys.argv[1])) as s:
    assert store.revoke_api_key(s, sys.argv[2]) == 1
"""


def count_connections(api) -> list[int]:
    """One entry per connection the app's engine hands out from now on."""
    taken: list[int] = []
    event.listen(api.app.state.engine(), "checkout", lambda *_: taken.append(1))
    return taken


def test_a_recently_checked_key_costs_no_database_connection(api):
    http = api.client(api.tenant("acme"))
    sid = http.post("/v1/searches", json={"data": "synthetic"}).json()["id"]
    taken = count_connections(api)
    for _ in range(3):
        assert http.get(f"/v1/searches/{sid}").json()["status"] == "queued"
        assert http.get("/v1/searches").status_code == 200
    assert len(taken) == 6  # the routes' own reads; the key came from the cache
    assert_problem(api.client("hssl_deadbeef_nope").get("/v1/searches"), 401)
    assert len(taken) == 7  # an unknown key is asked for every time


def test_with_the_cache_off_every_request_checks_its_key(start):
    api = start(key_cache_s=0)
    http = api.client(api.tenant("acme"))
    http.get("/v1/searches")
    taken = count_connections(api)
    for _ in range(3):
        assert http.get("/v1/searches").status_code == 200
    assert len(taken) == 6


class Clock:
    """Stands in for ``time`` in ``service.http.auth`` (the key cache's clock): ``monotonic()``
    is what the test sets, so a TTL is crossed by the test, not by waiting."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.mark.slow
def test_a_revoke_by_another_process_takes_effect_within_key_cache_s(start, monkeypatch):
    api = start(key_cache_s=2.0)
    clock = Clock(1000.0)
    monkeypatch.setattr(auth, "time", clock)  # the cache's clock; the server keeps the real one
    key = api.tenant("acme")
    http = api.client(key)
    assert http.get("/v1/searches").status_code == 200  # read at 1000.0, cached now
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    url, prefix = api.settings.resolved_database_url, key.split("_")[1]
    subprocess.run([sys.executable, "-c", REVOKE, url, prefix], check=True, env=env, timeout=60)
    clock.now = 1000.0 + 1.9  # this process did not see the revoke: the cached key still works
    assert http.get("/v1/searches").status_code == 200
    clock.now = 1000.0 + 2.0  # key_cache_s after the read: the key is checked again, refused
    assert_problem(http.get("/v1/searches"), 401)


def test_entries_expire_are_bounded_and_go_stale_when_a_revoke_commits(sqlite_database_url):
    cache = auth.KeyCache(5.0, max_keys=2)
    tenant = object()
    generation = auth._generation
    cache.put("a", tenant, read_at=100.0, generation=generation)
    assert cache.get("a", now=104.9) is tenant
    assert cache.get("a", now=105.0) is None  # expired, and dropped
    for digest in ("a", "b", "c"):
        cache.put(digest, tenant, read_at=100.0, generation=generation)
    assert len(cache) == 2 and cache.get("a", now=100.0) is None  # least recently used out

    engine = engine_for(sqlite_database_url)
    with session_scope(engine) as s:
        owner = store.create_tenant(s, "acme", max_concurrent=1, max_trials=1)
        _key, row = store.create_api_key(s, owner)
    assert auth._generation == generation  # creating keys leaves the cache alone
    with pytest.raises(RuntimeError), session_scope(engine) as s:
        assert store.revoke_api_key(s, row.prefix) == 1
        raise RuntimeError("rolled back")
    assert auth._generation == generation and cache.get("b", now=100.0) is tenant
    with session_scope(engine) as s:
        assert store.revoke_api_key(s, row.prefix) == 1
    assert auth._generation == generation + 1
    assert cache.get("b", now=100.0) is None  # read before the revoke: stale


def test_a_revoke_in_this_process_is_refused_on_the_next_request(api):
    key = api.tenant("acme")
    http = api.client(key)
    assert http.get(f"/v1/searches/{uuid.uuid4()}").status_code == 404  # cached now
    with session_scope(api.engine) as s:
        assert store.revoke_api_key(s, key.split("_")[1]) == 1
    assert_problem(http.get(f"/v1/searches/{uuid.uuid4()}"), 401)
