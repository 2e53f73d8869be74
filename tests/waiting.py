"""Waiting in tests without sleep-and-hope: poll a condition until it holds or a deadline
passes, then fail naming what was awaited. A fixed sleep that a test relies on for ordering
races a slow (shared, 2-core) machine; a bounded poll waits exactly as long as needed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    every: float = 0.02,
    *,
    alive: Callable[[], None] | None = None,
    logs: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` every ``every`` seconds until it returns something truthy, and return
    that; after ``timeout`` seconds raise AssertionError saying what was awaited (with
    ``logs()`` appended). An exception from ``predicate`` propagates at once (a check can fail
    fast instead of timing out); so does one from ``alive()``, called each round to fail as
    soon as a process the wait depends on has died."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None:
            alive()
        if time.monotonic() >= deadline:
            tail = f"\n{logs()}" if logs is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{tail}")
        time.sleep(every)
