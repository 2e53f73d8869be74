"""Claims on a search's runs, so several processes (shards) can share one search.

A *unit* is one run a strategy may start: a baseline seed, a joint seed, a (candidate, seed)
of the independent strategy, one draw (the n-th sampled trial) of the optuna strategy. A
strategy claims a unit before it runs it and marks it done after; whether the unit's result
is already in the study is still read from the study (so a resumed search skips what is
finished either way).

- ``SoloClaims``: one process runs the search (``hssl search run``): every claim succeeds.
- The service's claims (``service.jobs.shards``) keep one row per unit in its database, owned by a
  shard job: ``exclusive`` is True there, so a unit claimed is run by nobody else, and a run
  left ``RUNNING`` in the study under that unit is a dead shard's, failed as interrupted.
"""

from __future__ import annotations

from typing import Protocol


class Claims(Protocol):
    exclusive: bool

    def claim(self, unit: str, weight: int = 1) -> bool:
        """True: the caller runs ``unit`` now. False: it is done, or another process runs
        it. ``weight`` is how many planned trials the unit covers (progress)."""

    def done(self, unit: str) -> None:
        """The claimed unit finished (its result is in the study)."""


class SoloClaims:
    exclusive = False

    def claim(self, unit: str, weight: int = 1) -> bool:
        return True

    def done(self, unit: str) -> None:
        return None


def baseline_unit(seed: int) -> str:
    return f"baseline:s{seed}"


def joint_unit(seed: int) -> str:
    return f"joint:s{seed}"


def independent_unit(label: str, seed: int) -> str:
    return f"independent:{label}:s{seed}"


def optuna_unit(draw: int) -> str:
    return f"optuna:{draw}"
