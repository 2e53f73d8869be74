"""Where a run's time goes: seconds per phase (training steps, data, each part of an
evaluation, checkpoints), accumulated while the run goes and taken once per epoch into its
``log.jsonl`` line (``phase_s``). Timing only: nothing here changes what a run computes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class Phases:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def take(self) -> dict[str, float]:
        """The seconds so far, rounded to 1 ms, and a fresh start."""
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        self.seconds = {}
        return out


@contextlib.contextmanager
def untimed(name: str) -> Iterator[None]:
    """A stand-in for :class:`Phases` where no one keeps time."""
    yield
