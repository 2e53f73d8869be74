"""A search's shards: the service side of the fan-out.

A search starts as one shard job. Once its pre-screen is done, the running search says how
many of its runs may go at once (``search.run.parallel_runs``); ``fan_out`` adds that many
shard jobs (``service.persistence.jobs.add_shards``) and hands the new ones to the
dispatcher, so any free worker slot of the queue joins. Each shard runs the search's strategy
loop with ``ShardClaims``: a run is executed by the shard that claims it
(``service.persistence.runs``). A shard whose tenant runs its maximum waits here, polling,
until a run of the tenant ends.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from service.persistence import jobs, runs
from service.persistence.db import retrying, session_scope
from service.statuses import Claim

log = logging.getLogger(__name__)

CAPPED_POLL_S = 2.0
Announce = Callable[[list[tuple[int, str]]], None]  # new (shard, queue) pairs → dispatcher


class ShardClaims:
    """``search.claims.Claims`` on our ``search_runs`` table for one shard job."""

    exclusive = True

    def __init__(
        self,
        engine: Engine,
        search_id: uuid.UUID,
        job: jobs.HeldJob,
        stop: Callable[[], bool],
        poll_s: float = CAPPED_POLL_S,
    ) -> None:
        self.engine, self.search_id, self.job = engine, search_id, job
        self.stop, self.poll_s = stop, poll_s

    def claim(self, unit: str, weight: int = 1) -> bool:
        while True:
            answer = retrying(self.engine, lambda: self._claim(unit, weight), f"claim {unit}")
            if answer is not Claim.CAPPED:
                return answer is Claim.CLAIMED
            if self.stop():  # cancelled (or interrupted: raised by the poll)
                return False
            time.sleep(self.poll_s)

    def _claim(self, unit: str, weight: int) -> Claim:
        try:
            with session_scope(self.engine) as s:
                return runs.claim_run(s, self.search_id, unit, weight, self.job.id)
        except IntegrityError:  # another shard inserted the same claim first
            return Claim.TAKEN

    def done(self, unit: str) -> None:
        def finish() -> None:
            with session_scope(self.engine) as s:
                runs.finish_run(s, self.search_id, unit, self.job.id)

        retrying(self.engine, finish, f"finish {unit}")


def fan_out(
    engine: Engine, search_id: uuid.UUID, announce: Announce | None, most: int
) -> Callable[[int], None]:
    """``run_search``'s ``fan_out``: make the search ``min(n, most)`` shards, announcing the
    new ones (an announcement that fails is not lost: the rows wait for a worker's claim or
    the outbox)."""

    def grow(n: int) -> None:
        def add() -> list[tuple[int, str]]:
            with session_scope(engine) as s:
                return jobs.add_shards(s, search_id, max(1, min(n, most)))

        added = retrying(engine, add, f"search {search_id}: shards")
        if added and announce is not None:
            try:
                announce(added)
            except Exception as exc:
                log.warning("search %s: could not announce shards %s: %s", search_id, added, exc)

    return grow


def is_last_shard(engine: Engine, search_id: uuid.UUID, job: jobs.HeldJob) -> bool:
    """Election after a shard ran out of runs (``service.persistence.jobs.finish_shard``)."""

    def elect() -> bool:
        with session_scope(engine) as s:
            return jobs.finish_shard(s, search_id, job.id, nothing_left=True)

    return retrying(engine, elect, f"search {search_id}: finish shard {job.shard}")
