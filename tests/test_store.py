"""``service.persistence.store`` on SQLite and PostgreSQL: tenants and hashed keys, search
submission (idempotency, quotas, one transaction), keyset pagination, tenant isolation, events,
trials."""

import hashlib
import uuid

import pytest
from sqlalchemy import func, select

from service.errors import Conflict, NotFound, Problem, QuotaExceeded
from service.persistence import store
from service.persistence.db import engine_for, session_scope
from service.persistence.models import ApiKey, Job, Search, SearchEvent


@pytest.fixture
def db(database_url):
    engine = engine_for(database_url)
    yield engine
    engine.dispose()


def tenant(db, name="acme", max_concurrent=10, max_trials=20):
    with session_scope(db) as s:
        return store.create_tenant(s, name, max_concurrent=max_concurrent, max_trials=max_trials)


def submit(db, owner, n=0, *, key=None, planned=4, spec=None):
    with session_scope(db) as s:
        return store.create_search(
            s,
            owner,
            spec=spec or {"data": "synthetic", "n": n},
            name=f"search-{n}",
            study_name=f"study-{n}",
            planned=planned,
            idempotency_key=key,
            queue="default",
        )


def test_keys_are_hashed_at_rest_authenticate_and_stop_at_once_when_revoked(db):
    acme = tenant(db)
    with pytest.raises(Conflict, match="already exists"), session_scope(db) as s:
        store.create_tenant(s, "acme", max_concurrent=1, max_trials=1)
    with session_scope(db) as s:
        key, row = store.create_api_key(s, acme, "ci")
    assert key.startswith(f"hssl_{row.prefix}_") and len(row.prefix) == 8

    with session_scope(db) as s:
        stored = s.execute(select(ApiKey.__table__)).one()._mapping
        secret = key.split("_", 2)[2]
        assert all(key not in str(v) and secret not in str(v) for v in stored.values())
        assert stored["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
        assert store.authenticate(s, key).id == acme.id
        for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), "hssl_x", "", "Bearer"):
            assert store.authenticate(s, wrong) is None

    with session_scope(db) as s:
        assert store.revoke_api_key(s, row.prefix) == 1
    with session_scope(db) as s:
        assert store.authenticate(s, key) is None
        assert store.revoke_api_key(s, row.prefix) == 0


def test_submission_is_idempotent_per_key_and_body_and_enforces_quotas(db):
    owner = tenant(db, max_concurrent=2, max_trials=10)
    first, created = submit(db, owner, 1, key="k-1")
    again, created_again = submit(db, owner, 1, key="k-1")
    assert created and not created_again and again.id == first.id
    with pytest.raises(Conflict, match="different body"):
        submit(db, owner, 2, key="k-1")
    with pytest.raises(QuotaExceeded, match="plans 11 runs"):
        submit(db, owner, 3, planned=11)
    submit(db, owner, 4)
    with pytest.raises(QuotaExceeded, match="2 searches are active"):
        submit(db, owner, 5)

    with session_scope(db) as s:  # the search, its job and its first event went in together
        assert s.scalar(select(func.count()).select_from(Search)) == 2
        jobs = s.scalars(select(Job).where(Job.search_id == first.id)).all()
        assert [(j.status, j.queue) for j in jobs] == [("queued", "default")]
        assert [e.kind for e in store.events_after(s, first.id, 0)] == ["search.queued"]
        # cancelling a queued search is immediate and frees a slot
        assert store.request_cancel(s, owner.id, first.id).status == "cancelled"
        assert store.cancel_requested(s, first.id)
    submit(db, owner, 6)
    with session_scope(db) as s:
        assert store.counts_by_status(s) == {"cancelled": 1, "queued": 2}


def test_list_searches_pages_by_cursor_filters_by_status_and_isolates_tenants(db):
    owner, other = tenant(db), tenant(db, "other")
    ids = [submit(db, owner, n)[0].id for n in range(5)]
    theirs, _ = submit(db, other, 99)

    seen, cursor, pages = [], None, 0
    while True:
        with session_scope(db) as s:
            page, cursor = store.list_searches(s, owner.id, status=None, limit=2, cursor=cursor)
        seen += [row.id for row in page]
        pages += 1
        if cursor is None:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 5 and set(seen) == set(ids)
    assert seen[0] == ids[-1]  # newest first

    with session_scope(db) as s:
        store.set_status(s, store.get_search(s, None, ids[2]), "completed")
    with session_scope(db) as s:
        done, more = store.list_searches(s, owner.id, status="completed", limit=2, cursor=None)
        assert [r.id for r in done] == [ids[2]] and more is None
        with pytest.raises(Problem, match="invalid cursor"):
            store.list_searches(s, owner.id, status=None, limit=2, cursor="not-a-cursor")

        # another tenant's search does not exist for this one
        with pytest.raises(NotFound):
            store.get_search(s, owner.id, theirs.id)
        with pytest.raises(NotFound):
            store.request_cancel(s, owner.id, theirs.id)
        with pytest.raises(NotFound):
            store.get_search(s, owner.id, uuid.uuid4())
        assert store.get_search(s, None, theirs.id).id == theirs.id  # workers see any tenant
        mine, _ = store.list_searches(s, other.id, status=None, limit=10, cursor=None)
        assert [r.id for r in mine] == [theirs.id]


def test_events_come_in_order_and_trials_upsert_with_progress(db):
    search, _ = submit(db, tenant(db))
    with session_scope(db) as s:
        row = store.get_search(s, None, search.id)
        store.set_status(s, row, "running")
        for epoch in range(3):
            store.add_event(s, search.id, "trial.reported", {"epoch": epoch})
    with session_scope(db) as s:
        events = store.events_after(s, search.id, 0)
        assert [e.kind for e in events] == ["search.queued", "search.running"] + [
            "trial.reported"
        ] * 3
        assert [e.id for e in events] == sorted(e.id for e in events)
        tail = store.events_after(s, search.id, events[1].id, limit=2)
        assert [e.data for e in tail] == [{"epoch": 0}, {"epoch": 1}]
        assert store.events_after(s, search.id, events[-1].id) == []
        assert s.scalar(select(func.count()).select_from(SearchEvent)) == 5

    def trial(number, state, values=None):
        return {
            "number": number,
            "label": f"h{number}",
            "seed": 0,
            "state": state,
            "values": values,
            "attrs": {"duration_s": 1.5},
        }

    with session_scope(db) as s:
        row = store.get_search(s, None, search.id)
        assert row.started_at is not None
        store.save_trial(s, row, trial(0, "COMPLETE", [0.5, 0.1]))
        store.save_trial(s, row, trial(1, "FAIL"))
        assert (row.finished, row.failed) == (2, 1)
        store.save_trial(s, row, trial(1, "COMPLETE", [0.6, 0.2]))  # a retried trial
        assert (row.finished, row.failed) == (2, 0)
    with session_scope(db) as s:
        row = store.get_search(s, None, search.id)
        assert (row.finished, row.failed) == (2, 0)
        trials = store.list_trials(s, row, limit=10, after=-1)
        assert [(t.number, t.state, t.values) for t in trials] == [
            (0, "COMPLETE", [0.5, 0.1]),
            (1, "COMPLETE", [0.6, 0.2]),
        ]
        assert [t.number for t in store.list_trials(s, row, limit=10, after=0)] == [1]
