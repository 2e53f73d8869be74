"""Run one submitted search to its end: the single entry point both dispatchers call.

``execute_search`` loads the search, marks it running, runs ``search.run.run_search`` on the
search's own Optuna study (trials in child processes), writes every event and finished trial
to our tables as it happens, and finally stores the ranking and recommendation and the final
status. It never raises (a dispatcher loop must survive any search): an error fails the
search with a one-line reason.

Given its ``job`` (a dispatcher's), it runs as one *shard* of the search (``service.jobs.shards``):
it runs the runs it can claim, asks for more shards once it knows how many runs may go at
once, and only the last shard to finish writes the ranking, recommendation and final status
(Outcome.SHARD_DONE is what the others return). Without a job it runs the whole search alone.

A database that goes away (a PostgreSQL restart, a network blip) is waited for and the step
that failed is run again: the study is resumed (the trial in flight is reconciled as
interrupted and rerun from its checkpoint), a final write is repeated in a new transaction.

Cancellation is polled from the database at most every ``CANCEL_POLL_S`` seconds. A
dispatcher that is shutting down sets ``interrupt``: the run is abandoned as if its process
had died (the trial in flight is killed and not recorded; a trial Optuna had asked is failed
as interrupted when the study resumes), and the search stays ``running`` so its next
execution resumes the study where it stopped.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Engine

from search.jsonable import plain_json
from service.jobs.shards import Announce, ShardClaims, fan_out, is_last_shard
from service.persistence import store
from service.persistence.db import engine_of, retrying, session_scope
from service.persistence.jobs import HeldJob
from service.persistence.models import Search
from service.persistence.settings import Settings
from service.statuses import FINAL, FINAL_STATUS_AFTER, Outcome, SearchStatus
from training.errors import DataError

if TYPE_CHECKING:  # search.run imports torch: only when a search runs
    from search.run import SearchOutcome

log = logging.getLogger(__name__)

CANCEL_POLL_S = 2.0


class Interrupted(BaseException):
    """Raised through ``run_search`` when ``interrupt`` is set (a BaseException, so no
    ``except Exception`` on the way records it as a failed trial)."""


class Flag(Protocol):
    """What stops a run without cancelling it (a threading.Event, or several: AnyOf)."""

    def is_set(self) -> bool: ...


def one_line(exc: BaseException, limit: int = 500) -> str:
    text = " ".join(str(exc).split()) or "no details"
    line = f"{type(exc).__name__}: {text}"
    return line if len(line) <= limit else line[: limit - 1] + "…"


class CancelPoll:
    """``should_cancel`` for ``run_search``: True once the search's cancel was requested
    (read from the database at most every ``every`` seconds); raises ``Interrupted`` once
    ``interrupt`` is set (a cancel already seen wins)."""

    def __init__(
        self,
        engine: Engine,
        search_id: uuid.UUID,
        interrupt: Flag | None = None,
        every: float = CANCEL_POLL_S,
    ) -> None:
        self.engine, self.search_id, self.interrupt, self.every = (
            engine,
            search_id,
            interrupt,
            every,
        )
        self.requested = False
        self._last = float("-inf")
        self._lock = threading.Lock()

    def interrupted(self) -> bool:
        return self.interrupt is not None and self.interrupt.is_set()

    def check_now(self) -> bool:
        with session_scope(self.engine) as s:
            self.requested = self.requested or store.cancel_requested(s, self.search_id)
        self._last = time.monotonic()
        return self.requested

    def __call__(self) -> bool:
        if self.requested:
            return True
        if self.interrupted():
            raise Interrupted
        with self._lock:
            if time.monotonic() - self._last >= self.every:
                try:
                    self.check_now()
                except Exception as exc:  # the database blinked: ask again next time
                    self._last = time.monotonic()
                    log.warning("search %s: cancel poll failed: %s", self.search_id, one_line(exc))
        return self.requested


class EventWriter:
    """``on_event`` for ``run_search``: each event a row of ``search_events``; a finished
    trial (with a study number) also a row of ``search_trials``. A write that fails (the
    database is away) is logged, not raised, and kept: the next event, or ``flush`` at the
    end of the search, writes the waiting ones first, in order, so no event is lost."""

    MAX_WAITING = 100_000  # a very long outage drops the oldest (the study keeps the trials)

    def __init__(self, engine: Engine, search_id: uuid.UUID) -> None:
        self.engine, self.search_id = engine, search_id
        self.waiting: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        self.waiting.append((kind, plain_json(data)))
        del self.waiting[: -self.MAX_WAITING]
        try:
            self.flush()
        except Exception as exc:
            log.warning(
                "search %s: could not record %s (%d waiting): %s",
                self.search_id,
                kind,
                len(self.waiting),
                one_line(exc),
            )

    def flush(self) -> None:
        """Write every waiting event in one transaction (raises if the database is away)."""
        if not self.waiting:
            return
        with session_scope(self.engine) as s:
            search = s.get(Search, self.search_id)
            for kind, data in self.waiting:
                store.add_event(s, self.search_id, kind, data)
                if kind == "trial.finished" and data.get("number") is not None:
                    store.save_trial(s, search, trial_row(data))
        self.waiting.clear()


def trial_row(data: dict[str, Any]) -> dict[str, Any]:
    attrs = data.get("attrs") or {}
    seed = data.get("seed", attrs.get("seed"))
    return {
        "number": data["number"],
        "label": str(data.get("label") or attrs.get("label") or "unknown")[:200],
        "seed": seed if isinstance(seed, int) else -1,
        "state": data.get("state") or "FAIL",
        "values": data.get("values"),
        "attrs": attrs,
    }


def execute_search(
    settings: Settings,
    search_id: uuid.UUID | str,
    *,
    interrupt: Flag | None = None,
    job: HeldJob | None = None,
    announce: Announce | None = None,
    memory_limit_mb: int | None = None,
) -> str:
    """Run the search to its end; returns its final status (``completed``, ``failed``,
    ``cancelled``), or ``interrupted`` when ``interrupt`` stopped it (still ``running``, to
    be resumed). A search already final returns at once. Never raises. With ``job``, runs
    as that shard (``announce`` hands new shards to the dispatcher) and returns Outcome.SHARD_DONE
    when another shard is still at work (it will finish the search). ``memory_limit_mb``
    caps each trial (the worker slot's share of its GPU)."""
    try:
        sid = search_id if isinstance(search_id, uuid.UUID) else uuid.UUID(str(search_id))
        engine = engine_of(settings)
    except Exception as exc:
        log.error("search %s: cannot start: %s", search_id, one_line(exc))
        return Outcome.FAILED
    try:
        return _execute(settings, engine, sid, interrupt, job, announce, memory_limit_mb)
    except Exception as exc:
        log.exception("search %s failed", sid)
        public = getattr(exc, "public", None)  # a DataError: the client's terms, no server path
        return fail_search(
            engine, sid, one_line(exc) if public is None else one_line(DataError(public))
        )


def fail_search(engine: Engine, sid: uuid.UUID, error: str) -> str:
    """Fail the search with ``error`` unless it is final already; its status. Never raises."""
    try:
        with session_scope(engine) as s:
            search = s.get(Search, sid, with_for_update=True)
            if search is None:
                return Outcome.FAILED
            if search.status in FINAL:
                return search.status
            store.set_status(s, search, SearchStatus.FAILED, error)
    except Exception as exc:
        log.error("search %s: could not record its failure (%s): %s", sid, error, one_line(exc))
    return Outcome.FAILED


def _execute(
    settings: Settings,
    engine: Engine,
    sid: uuid.UUID,
    interrupt: Flag | None,
    job: HeldJob | None,
    announce: Announce | None,
    memory_limit_mb: int | None = None,
) -> str:
    """Start, run (as ``job``'s shard, or alone), and, if this is the last shard, finish."""
    from search.run import finish_search, run_search
    from search.spec import SearchSpec

    started = retrying(engine, lambda: _start(engine, sid), f"search {sid}: start")
    if isinstance(started, str):
        return started
    raw, study = started
    spec = SearchSpec.model_validate({**raw, "name": study})
    poll = CancelPoll(engine, sid, interrupt)
    writer = EventWriter(engine, sid)
    shard = _shard_options(settings, engine, sid, job, poll, announce)
    run = functools.partial(
        run_search,
        spec,
        settings.data_dir,
        storage_url=settings.resolved_optuna_url,
        resume=True,
        progress=False,
        isolate=True,
        should_cancel=poll,
        on_event=writer,
        data_root=settings.resolved_data_root,  # the worker reads only under it
        memory_limit_mb=memory_limit_mb,
        artifact_dir=settings.resolved_artifact_dir,
        **shard,
    )
    try:
        outcome = retrying(engine, run, f"search {sid}")
    except Interrupted:
        writer("search.interrupted", {"reason": "its worker is stopping"})
        return Outcome.INTERRUPTED
    retrying(engine, writer.flush, f"search {sid}: events")
    if job is not None:
        if not is_last_shard(engine, sid, job):
            return Outcome.SHARD_DONE
        cancelled = retrying(engine, poll.check_now, f"search {sid}: cancel")
        status = Outcome.CANCELLED if cancelled else outcome.status
        workdir = Path(settings.data_dir) / "searches" / study
        outcome = finish_search(
            study, spec, outcome.storage, workdir, status, settings.resolved_artifact_dir
        )
    if Outcome(outcome.status) == Outcome.OUT_OF_TIME:  # an unknown word raises: never silent
        budget = spec.budget.wall_clock_s
        reason = f"its wall-clock budget of {budget:g} s ran out; ranked on the runs it finished"
        writer("search.out_of_time", {"reason": reason})
        retrying(engine, writer.flush, f"search {sid}: events")
    return _store_results(engine, sid, outcome)


def _shard_options(
    settings: Settings,
    engine: Engine,
    sid: uuid.UUID,
    job: HeldJob | None,
    poll: CancelPoll,
    announce: Announce | None,
) -> dict[str, Any]:
    """``run_search``'s options for running as one shard: exclusive claims, the fan-out, no
    reconciling of live siblings' trials and no finishing (the last shard finishes)."""
    if job is None:
        return {}
    return {
        "claims": ShardClaims(engine, sid, job, poll),
        "fan_out": fan_out(engine, sid, announce, settings.max_shards),
        "reconcile": False,
        "finish": False,
    }


def _store_results(engine: Engine, sid: uuid.UUID, outcome: SearchOutcome) -> str:
    """Copy the trials, then store ranking and recommendation and the final status (unless
    the search became final meanwhile, e.g. failed by a stale-job sweep); that status."""
    retrying(
        engine,
        lambda: _copy_trials(engine, sid, outcome.storage, outcome.study),
        f"search {sid}: copy trials",
    )
    recommendation = None
    path = outcome.files.get("json")
    if path is not None and Path(path).is_file():
        recommendation = json.loads(Path(path).read_text())
    final = FINAL_STATUS_AFTER[Outcome(outcome.status)]

    def finish() -> str:
        with session_scope(engine) as s:
            search = s.get(Search, sid, with_for_update=True)
            if search.status in FINAL:
                return search.status
            store.save_results(s, search, plain_json(outcome.ranking), plain_json(recommendation))
            store.set_status(s, search, final)
        return final

    return retrying(engine, finish, f"search {sid}: finish")


def _start(engine: Engine, sid: uuid.UUID) -> str | tuple[dict[str, Any], str]:
    """Mark the search running; its (spec, study name), or its status if it is not to run."""
    with session_scope(engine) as s:
        search = s.get(Search, sid, with_for_update=True)
        if search is None:
            log.error("search %s does not exist", sid)
            return Outcome.FAILED
        if search.status in FINAL:
            return search.status
        if (
            search.status == SearchStatus.QUEUED
        ):  # shards joining, or a retry, find it running already
            store.set_status(s, search, SearchStatus.RUNNING)
        return dict(search.spec), search.study_name


def _copy_trials(engine: Engine, sid: uuid.UUID, storage_url: str, study_name: str) -> None:
    """Copy every finished trial of the study (the record) into ``search_trials``, so rows a
    crash or a failed write missed are there before the search is final."""
    import optuna

    from search.storage import make_storage

    storage = make_storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        finished = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.state.is_finished() and "label" in t.user_attrs
        ]
    finally:
        storage.engine.dispose()  # one engine per search: do not keep its connections
    rows = [
        trial_row(
            {
                "number": t.number,
                "label": t.user_attrs.get("label"),
                "seed": t.user_attrs.get("seed"),
                "state": t.state.name,
                "values": t.values,
                "attrs": dict(t.user_attrs),
            }
        )
        for t in finished
    ]
    with session_scope(engine) as s:
        search = s.get(Search, sid)
        for row in rows:
            store.save_trial(s, search, plain_json(row))
