"""The strategy protocol and its registry: one class per search algorithm, registered once (as
Optuna's samplers are one class each). Everything that depends on the strategy derives from it:
the spec's ``strategy`` literal and its cross-field rules, how many runs a search plans and how
many may go at once, the study's directions and metric names, how it runs and how it reports.
Adding a strategy is one module in ``search/strategies/`` (a subclass, ``@register``ed) and its
tests.

A leaf module (no optuna, numpy or torch): the light API validates specs with it. A strategy's
``run`` and ``report`` import the engine when a search actually runs; importing the ``search``
package registers every strategy (``search/__init__.py``), so the registry is full before
``search.spec`` builds its literal from it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from search.objectives import direction_of


class Strategy:
    """One search algorithm. Subclasses set ``name`` and ``summary`` and implement ``run``,
    ``report`` and ``write_outputs``; the planning defaults below fit a strategy that trains
    candidate heads. (``spec`` is a ``SearchSpec`` and ``ctx`` a ``SearchContext``: typed
    ``Any`` here, so that this leaf imports neither.)"""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for the spec's description and the docs
    prescreen: ClassVar[bool] = False  # honours budget.prescreen_keep
    baseline: ClassVar[bool] = True  # honours include_baseline (runs the no-head baseline)
    shared_base: ClassVar[bool] = False  # its heads share one base (one probe score for all)

    # --- what it plans (from the spec alone) -------------------------------------------------

    def defaults(self, data: dict[str, Any]) -> dict[str, Any]:
        """The raw spec with this strategy's defaults filled in (before validation)."""
        return data

    def check(self, spec: Any) -> None:
        """Raise ``ValueError`` naming what is inconsistent in ``spec`` for this strategy."""

    def schema_rule(self) -> dict[str, Any] | None:
        """The same rule as JSON Schema (``then`` of an ``if strategy == name``), if any."""
        return None

    def candidates(self, spec: Any) -> int:
        """How many candidate heads get runs (after a pre-screen)."""
        return spec.budget.prescreen_keep or len(spec.space.candidates())

    def planned_trials(self, spec: Any) -> int:
        """How many runs (trials) the search counts, for progress and quotas."""
        return self.candidates(spec) * len(spec.seeds())

    def width(self, spec: Any) -> int:
        """How many of its runs could go at once, before the budget's cap."""
        return self.candidates(spec) * len(spec.seeds())

    def parallel_runs(self, spec: Any) -> int:
        """How many runs of the search may go at once (baselines count as runs too), at most
        ``budget.parallel``."""
        width = self.width(spec)
        if self.baseline and spec.include_baseline:
            width = max(width, len(spec.seeds()))
        return max(1, min(width, spec.budget.parallel or width))

    def objectives(self, spec: Any) -> list[str]:
        """The objectives the study optimises (one direction each)."""
        return list(spec.objectives)

    def directions(self, spec: Any) -> list[str]:
        return [direction_of(o) for o in self.objectives(spec)]

    def metric_names(self, spec: Any) -> list[str]:
        """What optuna-dashboard's plots call the study's values."""
        return self.objectives(spec)

    def stages(self, spec: Any) -> list[dict[str, Any]]:
        """The stages a user sees in the status (one unless the strategy has several)."""
        return [{"stage": 1, "name": self.name, "planned": self.planned_trials(spec)}]

    # --- how it runs and reports (imports the engine) ----------------------------------------

    def run(self, ctx: Any, candidates: list[Any]) -> None:
        raise NotImplementedError

    def report(self, study: Any, spec: Any) -> dict[str, Any]:
        """Its table and ranking JSON (``report["table"]``, ``report["ranking"]``)."""
        raise NotImplementedError

    def write_outputs(
        self, study: Any, spec: Any, report: dict[str, Any], url: str, out: Any
    ) -> dict[str, Any]:
        """Its files (ranking, plot, recommendation) in ``out``; name → path."""
        raise NotImplementedError


STRATEGIES: dict[str, Strategy] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Register a strategy class under its ``name`` (once)."""
    if cls.name in STRATEGIES:
        raise ValueError(f"strategy {cls.name!r} is registered twice")
    STRATEGIES[cls.name] = cls()
    return cls


def strategy_of(spec_or_name: Any) -> Strategy:
    """The registered strategy of a spec (or named). The ``search`` package registers every
    strategy when it is first imported (``search/__init__.py``)."""
    name = spec_or_name if isinstance(spec_or_name, str) else spec_or_name.strategy
    try:
        return STRATEGIES[name]
    except KeyError:
        known = ", ".join(STRATEGIES)
        raise ValueError(f"unknown strategy {name!r}; choose from {known}") from None


def stage_line(stage: dict[str, Any]) -> str:
    """A staged search entering a stage (its ``search.stage`` event), in one line."""
    line = f"stage {stage.get('stage')}/{stage.get('of')} ({stage.get('name')}): "
    line += f"{stage.get('planned')} run(s) on seeds {stage.get('seeds')}"
    if stage.get("kept") is not None:
        line += f"; kept {', '.join(stage['kept']) or 'none'}"
        if stage.get("screened_out"):
            line += f"; screened out {', '.join(stage['screened_out'])}"
    return line
