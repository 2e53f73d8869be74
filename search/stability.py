"""Stop a joint run once its discrepancy ranking has settled (``budget.stop_when_stable``).

The joint search scores every head by its discrepancy after each evaluation. In the first CPU
head study (docs/study/cpu-cpu, independent runs) the D_cka ranking at epoch 1 already agreed
with the final one at ρ ≈ 0.94 (D_kl at ≈ 0.37), so once the order stops changing, training
on may buy little; docs/study measures what stopping early costs. :func:`head_order` is the
order of the heads at one evaluation (mean rank over the objectives, as the ranking does);
:class:`StableRanking` remembers the orders and says stop once the same order has been seen
``patience + 1`` evaluations in a row (``patience`` evaluations without a change).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from search.stats import average_ranks


def head_order(metrics: dict[str, Any], objectives: Sequence[str]) -> tuple[str, ...] | None:
    """Head labels best first by mean rank over ``objectives`` (all maximised, ties by label);
    None when this evaluation lacks a head row or an objective value."""
    rows = metrics.get("heads") or []
    if not rows:
        return None
    values = []
    for name in objectives:
        column = [row.get(name) for row in rows]
        if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in column):
            return None
        values.append(average_ranks([-float(v) for v in column]))
    scores = [sum(ranks[i] for ranks in values) / len(values) for i in range(len(rows))]
    order = sorted(range(len(rows)), key=lambda i: (scores[i], rows[i]["head"]))
    return tuple(rows[i]["head"] for i in order)


@dataclass
class StableRanking:
    """Feed every evaluation to :meth:`update`; it returns True once the order has not changed
    for ``patience`` evaluations after it first appeared."""

    objectives: Sequence[str]
    patience: int
    orders: list[tuple[str, ...]] = field(default_factory=list)
    stopped_at: int | None = None  # epoch of the evaluation that stopped the run

    def update(self, epoch: int, metrics: dict[str, Any]) -> bool:
        order = head_order(metrics, self.objectives)
        if order is None or epoch == 0:  # the ranking at initialisation says nothing yet
            return False
        self.orders.append(order)
        recent = self.orders[-(self.patience + 1) :]
        if len(recent) == self.patience + 1 and len(set(recent)) == 1:
            self.stopped_at = epoch
            return True
        return False
