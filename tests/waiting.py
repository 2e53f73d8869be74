"""Waiting in tests without sleep-and-hope: poll a condition until it holds or a deadline
passes, then fail naming what was awaited. A fixed sleep that a test relies on for ordering
races a slow (shared, 2-core) machine; a bounded poll waits exactly as long as needed. The
suite's one waiting helper: the deadline is a bound for a hang, never a check of speed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Watched(Protocol):
    """Something a wait depends on: a server process, a container."""

    def assert_running(self) -> None:
        """Raise AssertionError (saying what happened) once it has stopped."""

    def logs(self) -> str:
        """Its recent output, for a failure message."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    every: float = 0.25,
    *,
    watching: Iterable[Watched] = (),
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that; after
    ``timeout`` seconds raise AssertionError saying what was awaited (with the logs of
    everything ``watching``). It is asked again after 10 ms, then at intervals doubling up to
    ``every`` seconds: a quick condition is seen at once, a long wait costs little CPU. An
    exception from ``predicate`` propagates at once (a check can fail fast instead of timing
    out); so does one from ``assert_running()`` of anything watched, asked each round, so a
    wait ends as soon as a process it depends on has died."""
    watched = list(watching)
    deadline = time.monotonic() + timeout
    pause = min(0.01, every)
    while True:
        value = predicate()
        if value:
            return value
        for thing in watched:
            thing.assert_running()
        if time.monotonic() >= deadline:
            tail = "".join(f"\n{thing.logs()}" for thing in watched)
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{tail}")
        time.sleep(pause)
        pause = min(pause * 2, every)
