"""Run claims and shard elections (``service.persistence.runs``, ``service.persistence.jobs``): a
run claimed by a running shard is nobody else's, a dead shard's claim is taken over, the tenant's
cap holds, and of shards finishing together exactly one is the last."""

from __future__ import annotations

import threading

from sqlalchemy import update

from service.persistence import jobs, runs
from service.persistence.db import engine_of, session_scope
from service.persistence.models import Job, Tenant
from service.statuses import Claim
from tests.dispatch_helpers import job_rows, new_search
from tests.search_helpers import tiny


def shards(settings, sid, n):
    """``n`` shard jobs of the search, all claimed (running); their ids by shard."""
    with session_scope(engine_of(settings)) as s:
        jobs.add_shards(s, sid, n)
    for i in range(n):
        with session_scope(engine_of(settings)) as s:
            assert jobs.claim_job(s, None, f"w{i}") is not None
    return [j.id for j in job_rows(settings, sid)]


def claim(settings, sid, unit, job_id, weight=1):
    with session_scope(engine_of(settings)) as s:
        return runs.claim_run(s, sid, unit, weight, job_id)


def test_a_claimed_run_is_nobody_elses_until_done_or_its_job_dies(settings):
    sid = new_search(settings, tiny(strategy="independent"))
    a, b = shards(settings, sid, 2)
    assert claim(settings, sid, "u1", a) is Claim.CLAIMED
    assert claim(settings, sid, "u1", b) is Claim.TAKEN
    assert claim(settings, sid, "u1", a) is Claim.CLAIMED  # its own job's next attempt
    with session_scope(engine_of(settings)) as s:  # a's worker died: its job was requeued
        s.execute(update(Job).where(Job.id == a).values(status="queued"))
    assert claim(settings, sid, "u1", b) is Claim.CLAIMED  # taken over
    with session_scope(engine_of(settings)) as s:
        assert not runs.finish_run(s, sid, "u1", a)  # no longer a's to finish
        assert runs.finish_run(s, sid, "u1", b)
    assert claim(settings, sid, "u1", a) is Claim.DONE


def test_the_tenants_cap_bounds_runs_over_its_searches_and_progress_counts_weights(settings):
    sid = new_search(settings, tiny(strategy="joint"))
    other = new_search(settings, tiny(strategy="independent"))
    a, _ = shards(settings, sid, 2)
    (c,) = shards(settings, other, 1)
    with session_scope(engine_of(settings)) as s:
        s.execute(update(Tenant).values(max_concurrent_runs=2))
    assert claim(settings, sid, "joint:s0", a, weight=3) is Claim.CLAIMED
    assert claim(settings, other, "x", c) is Claim.CLAIMED
    assert claim(settings, sid, "joint:s1", a, weight=3) is Claim.CAPPED
    with session_scope(engine_of(settings)) as s:
        assert runs.progress(s, sid) == (3, 0)
        runs.finish_run(s, sid, "joint:s0", a)
        assert runs.progress(s, sid) == (0, 3)
    assert claim(settings, sid, "joint:s1", a, weight=3) is Claim.CLAIMED


def test_concurrent_claims_of_one_run_give_it_to_exactly_one_shard(settings):
    sid = new_search(settings, tiny(strategy="independent"))
    ids = shards(settings, sid, 4)
    answers: list = []
    start = threading.Barrier(len(ids))

    def take(job_id):
        start.wait()
        try:
            answers.append(claim(settings, sid, "contested", job_id))
        except Exception as exc:  # a unique violation: another took it first
            answers.append(type(exc).__name__)

    threads = [threading.Thread(target=take, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers.count(Claim.CLAIMED) == 1, answers


def test_of_shards_finishing_together_exactly_one_is_last(settings):
    sid = new_search(settings, tiny(strategy="independent"))
    ids = shards(settings, sid, 5)
    with session_scope(engine_of(settings)) as s:  # one more shard, never started
        jobs.add_shards(s, sid, 6)
    last: list[bool] = []
    start = threading.Barrier(len(ids))

    def finish(job_id):
        start.wait()
        with session_scope(engine_of(settings)) as s:
            last.append(jobs.finish_shard(s, sid, job_id, nothing_left=True))

    threads = [threading.Thread(target=finish, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(last) == [False] * 4 + [True]
    statuses = sorted(j.status for j in job_rows(settings, sid))
    assert statuses == ["done"] * 5 + ["running"]  # the idle shard was closed, the last runs on
