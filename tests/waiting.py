"""Waiting in tests without sleep-and-hope: poll a condition until it holds or a deadline
passes, then fail naming what was awaited. A fixed sleep that a test relies on for ordering
races a slow (shared, 2-core) machine; a bounded poll waits exactly as long as needed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.02) -> T:
    """Call ``predicate`` every ``every`` seconds until it returns something truthy, and return
    that; after ``timeout`` seconds raise AssertionError saying what was awaited. An exception
    from ``predicate`` propagates at once (a check can fail fast instead of timing out)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)
