"""Run one search shard in a spawned child process: ``execute_in_child`` is
``execute_search`` with the search — the strategy loop, the ranking, the plot, the
recommendation — in a process of its own.

``hssl serve`` runs the API and its local dispatcher in one process; the search code imports
torch, timm, Optuna's samplers and matplotlib (most of a GB), so a search run in a dispatcher
thread would leave the API process that heavy for good. Here the dispatcher thread only
relays: it sets the child's stop event when its ``interrupt`` is set (the child then stops as
``execute_search`` does: the search stays ``running``, to be resumed), hands the shards the
child announces to the dispatcher, and returns the outcome the child sends. The child writes
everything (events, trials, ranking, recommendation, status) to the database and the
artifact files itself, so the API answers every read from what the search stored.

A child that dies without an outcome (killed by the kernel for memory, a crash in native
code) fails its search with that reason. A child never outlives the thread that started it
(the kernel's parent-death signal), so a killed server leaves no search running.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import uuid
from typing import Any

from service.jobs.execute import Flag, fail_search
from service.jobs.shards import Announce
from service.persistence.db import engine_of
from service.persistence.jobs import HeldJob
from service.persistence.settings import Settings
from service.statuses import Outcome
from training.errors import exc_line

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often the relay looks at ``interrupt``
STOP_GRACE_S = 30.0  # how long a stopped child may take to exit before it is killed
START_RETRY_S = 2.0  # the pause before a job whose child could not start goes back
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def execute_in_child(
    settings: Settings,
    search_id: uuid.UUID,
    *,
    interrupt: Flag | None = None,
    job: HeldJob | None = None,
    announce: Announce | None = None,
    memory_limit_mb: int | None = None,
) -> str:
    """``execute_search(settings, search_id, ...)`` in a spawned child; its outcome. Never
    raises."""
    try:
        proc, receive, stop = _start(settings, search_id, job, memory_limit_mb)
    except Exception as exc:  # out of processes or file descriptors: the job waits a little
        log.error("search %s: could not start its process: %s", search_id, exc_line(exc))
        time.sleep(START_RETRY_S)
        return Outcome.INTERRUPTED  # its job goes back to the queue
    try:
        outcome = _relay(proc, receive, stop, interrupt, announce)
    finally:
        receive.close()
        proc.join(STOP_GRACE_S)
        if proc.is_alive():  # it answered but does not exit (a stuck thread): it is done
            proc.kill()
            proc.join()
    if outcome is not None:
        return outcome
    if stop.is_set():  # killed after its grace: resumed like any interrupted search
        return Outcome.INTERRUPTED
    reason = f"its search process died ({_how(proc.exitcode)}); the server log has its last lines"
    log.error("search %s: %s", search_id, reason)
    return fail_search(engine_of(settings), search_id, reason)


def _start(settings: Settings, search_id: uuid.UUID, job: HeldJob | None, memory: int | None):
    """The started child, the parent's end of its pipe and the child's stop event."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    receive, send = ctx.Pipe(duplex=False)
    level = logging.getLogger().level
    args = (settings, search_id, job, memory, stop, send, os.getpid(), level)
    proc = ctx.Process(target=_child_main, args=args, name="hssl-search")
    try:
        proc.start()
    except BaseException:
        receive.close()
        raise
    finally:
        send.close()  # the child holds its own copy
    return proc, receive, stop


def _relay(proc, receive, stop, interrupt: Flag | None, announce: Announce | None) -> str | None:
    """Relay until the child sends its outcome, or closes its pipe (it died: None)."""
    stopped_at = None
    while True:
        if stopped_at is None and interrupt is not None and interrupt.is_set():
            stop.set()
            stopped_at = time.monotonic()
        if stopped_at is not None and time.monotonic() - stopped_at > STOP_GRACE_S:
            log.warning(
                "search process %s did not stop in %g s; killing it", proc.pid, STOP_GRACE_S
            )
            proc.kill()
            return None
        try:
            if not receive.poll(POLL_S):
                continue
            kind, value = receive.recv()
        except (EOFError, OSError):
            return None
        if kind == "outcome":  # its last word
            return value
        if kind == "announce" and announce is not None:
            try:
                announce(value)
            except Exception as exc:  # the rows wait for a claim anyway
                log.warning("could not announce shards %s: %s", value, exc_line(exc))


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = ", e.g. out of memory" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"


class _Signalled:
    """Set by SIGINT or SIGTERM: a Ctrl-C or a ``kill`` of the server's process group stops
    the search as the server's own shutdown does (it stays ``running``, to be resumed),
    never fails it. A plain attribute: a signal handler must not take a lock."""

    def __init__(self) -> None:
        self.flag = False

    def handle(self, signum: int, frame: Any) -> None:
        self.flag = True

    def is_set(self) -> bool:
        return self.flag


class _Sender:
    """The child's end of the pipe, safe to use from the search's threads."""

    def __init__(self, conn) -> None:
        self.conn, self.lock = conn, threading.Lock()

    def __call__(self, kind: str, value: Any) -> None:
        with self.lock:
            self.conn.send((kind, value))


def _child_main(
    settings: Settings,
    search_id: uuid.UUID,
    job: HeldJob | None,
    memory_limit_mb: int | None,
    stop,
    conn,
    parent_pid: int,
    log_level: int,
) -> None:
    signalled = _Signalled()  # first: Ctrl-C reaches the whole process group, imports or not
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signalled.handle)
    from search.trial_process import die_with_parent

    die_with_parent(parent_pid)
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    from service.jobs.execute import execute_search
    from service.jobs.lifecycle import AnyOf

    send = _Sender(conn)
    outcome = execute_search(
        settings,
        search_id,
        interrupt=AnyOf(stop, signalled),
        job=job,
        announce=lambda added: send("announce", added),
        memory_limit_mb=memory_limit_mb,
    )
    send("outcome", outcome)
    conn.close()
