"""What every strategy shares: the study, the runner, the budget clock, and how a finished run
becomes Optuna trials (values for the objectives, user attributes for the dashboard)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from search.claims import Claims, SoloClaims
from search.objectives import METRIC_OF
from search.records import result_attrs
from search.spec import SearchSpec
from search.storage import directions, reconcile_unit
from search.trial_process import Report
from training.metrics import keys as metric_keys
from training.recipe import TrialConfig, TrialResult
from training.specs import HeadSpec

Runner = Callable[..., TrialResult]
# what an epoch's trial.reported event carries: the probes and the per-head label-free metrics
BRIEF = (*metric_keys(kind="probe"), *metric_keys(kind="label_free", scope="head"))


@dataclass
class SearchContext:
    spec: SearchSpec
    study: optuna.Study
    workdir: Path
    runner: Runner
    emit: Callable[[str, dict[str, Any]], None] = lambda kind, data: None
    deadline: float | None = None  # time.monotonic() after which no run starts
    should_cancel: Callable[[], bool] | None = None
    claims: Claims = field(default_factory=SoloClaims)
    memory_limit_mb: int | None = None  # the worker slot's cap (the spec's may be smaller)
    fan_out: Callable[[int], None] | None = None  # the service's: grow the search's shards

    def claim(self, unit: str, weight: int = 1) -> bool:
        """Claim a unit (see ``search.claims``); with exclusive claims, trials the study
        still shows ``RUNNING`` under it belong to a shard that died: failed as
        interrupted (and announced) before the unit runs again."""
        if not self.claims.claim(unit, weight):
            return False
        if self.claims.exclusive:
            for number in reconcile_unit(self.study, unit):
                self.finished(self.study.trials[number])
        return True

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def cancelled(self) -> bool:
        return bool(self.should_cancel and self.should_cancel())

    def run(self, config: TrialConfig, name: str, report: Report | None = None) -> TrialResult:
        """Run one proxy trial, announcing its start and every epoch's report as events."""
        timeout = None if self.deadline is None else max(self.deadline - time.monotonic(), 1.0)
        heads = [h.label() for h in config.heads] or ["baseline"]
        self.emit("trial.started", {"run": name, "heads": heads, "seed": config.seed})

        def reported(epoch: int, metrics: dict[str, Any]) -> bool:
            keys = ("loss", *BRIEF)
            brief = {k: metrics[k] for k in keys if isinstance(metrics.get(k), float)}
            self.emit("trial.reported", {"run": name, "epoch": epoch, **brief})
            return bool(report(epoch, metrics)) if report else False

        return self.runner(
            config,
            reported,
            output_dir=self.workdir / name,
            timeout_s=timeout,
            should_cancel=self.should_cancel,
            memory_limit_mb=self.trial_memory_mb(),
            on_progress=lambda data: self.emit("trial.progress", {"run": name, **data}),
        )

    def trial_memory_mb(self) -> int | None:
        caps = [c for c in (self.spec.budget.trial_memory_mb, self.memory_limit_mb) if c]
        return min(caps) if caps else None

    def values(self, final: dict[str, Any]) -> list[float] | None:
        """The objectives' values of a head's final metrics; None if one is missing or nan."""
        out = [final.get(METRIC_OF[o]) for o in self.spec.objectives]
        if any(v is None or not math.isfinite(v) for v in out):
            return None
        return [float(v) for v in out]

    def head_param(self, candidates: list[HeadSpec]) -> CategoricalDistribution:
        return CategoricalDistribution([h.label() for h in candidates])

    def add_finished(
        self,
        result: TrialResult,
        head: HeadSpec,
        seed: int,
        strategy: str,
        candidates: list[HeadSpec],
        stage: int | None = None,
    ) -> optuna.trial.FrozenTrial:
        """Record one head of a finished run as a complete (or failed) trial (``stage``: which
        stage of a staged search it belongs to)."""
        attrs = result_attrs(result, head, seed, strategy)
        if stage is not None:
            attrs["stage"] = stage
        values = self.values(attrs["final"]) if result.status == "completed" else None
        if values is None and result.status == "completed":
            attrs["failure_reason"] = "an objective is missing or not finite"
        trial = optuna.trial.create_trial(
            state=TrialState.COMPLETE if values else TrialState.FAIL,
            values=values,
            params={"head": head.label()},
            distributions={"head": self.head_param(candidates)},
            user_attrs=attrs,
            intermediate_values=dict(enumerate(attrs["knn_curve"])),
        )
        self.study.add_trial(trial)
        self.finished(self.study.trials[-1])
        return trial

    def identify(
        self,
        trial: optuna.Trial,
        head: HeadSpec,
        seed: int,
        strategy: str,
        unit: str | None = None,
        stage: int | None = None,
    ) -> None:
        """Name an asked trial before it runs, so a trial whose process dies is still known
        (head, seed, strategy, stage) when it is reconciled as interrupted."""
        trial.set_user_attr("head", head.to_dict())
        trial.set_user_attr("label", head.label())
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("strategy", strategy)
        if unit is not None:
            trial.set_user_attr("unit", unit)
        if stage is not None:
            trial.set_user_attr("stage", stage)

    def tell(
        self, trial: optuna.Trial, result: TrialResult, head: HeadSpec, seed: int, strategy: str
    ) -> TrialState:
        """Finish an asked trial from a run's result; returns the state told."""
        attrs = result_attrs(result, head, seed, strategy)
        known = trial.user_attrs  # set by identify(): one storage write per attribute saved
        for key, value in attrs.items():
            if key not in known or known[key] != value:
                trial.set_user_attr(key, value)
        values = self.values(attrs["final"]) if result.status == "completed" else None
        if result.status == "stopped":
            state = TrialState.PRUNED
        elif values is None:
            state = TrialState.FAIL
            if result.status == "completed":
                trial.set_user_attr("failure_reason", "an objective is missing or not finite")
        else:
            state = TrialState.COMPLETE
        # one direction (one objective, or pruned mode: the study optimises the first one;
        # every objective's value is still in the user attributes and the ranking)
        single = len(directions(self.spec)) == 1 and values
        frozen = self.study.tell(trial, values[0] if single else values, state=state)
        self.finished(frozen)
        return state

    def record_baseline(self, result: TrialResult, seed: int) -> None:
        """The no-head baseline has no discrepancy, so it lives in a study attribute."""
        runs = [r for r in self.study.user_attrs.get("baseline", []) if r["seed"] != seed]
        runs.append(result_attrs(result, None, seed, "baseline"))
        self.study.set_user_attr("baseline", runs)
        self.emit(
            "trial.finished",
            {
                "number": None,
                "label": "baseline",
                "seed": seed,
                "state": "COMPLETE" if result.status == "completed" else "FAIL",
                "values": None,
                "attrs": runs[-1],
            },
        )

    def finished(self, trial: optuna.trial.FrozenTrial) -> None:
        attrs = dict(trial.user_attrs)
        self.emit(
            "trial.finished",
            {
                "number": trial.number,
                "label": attrs.get("label"),
                "seed": attrs.get("seed"),
                "state": trial.state.name,
                "values": trial.values,
                "attrs": attrs,
            },
        )
