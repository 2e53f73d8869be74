"""``calibrate``: no heads — TPE over the proxy recipe on the baseline (``search.calibrate``);
each trial one baseline run valued by its probe gain over the floor per minute."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.objectives import PROBE_OBJECTIVES
from search.strategy import Strategy, register

if TYPE_CHECKING:
    import optuna

    from search.context import SearchContext
    from training.specs import HeadSpec


@register
class Calibrate(Strategy):
    name = "calibrate"
    summary = "tune the proxy recipe on the baseline (search.calibrate)"
    baseline = False  # its trials are baseline runs already

    def defaults(self, data: dict[str, Any]) -> dict[str, Any]:
        """A calibration maximises a probe's gain: its objectives default to ``["knn"]``."""
        return {"objectives": ["knn"], **data}

    def check(self, spec) -> None:
        if len(spec.objectives) != 1 or spec.objectives[0] not in PROBE_OBJECTIVES:
            raise ValueError(
                "the calibrate strategy maximises one probe's gain over its floor per minute: "
                f"objectives must be one of {[[o] for o in PROBE_OBJECTIVES]}"
            )

    def schema_rule(self) -> dict[str, Any]:
        return {
            "properties": {"objectives": {"maxItems": 1, "items": {"enum": list(PROBE_OBJECTIVES)}}}
        }

    def planned_trials(self, spec) -> int:
        return spec.budget.trials

    def width(self, spec) -> int:
        return 1  # its sampler learns from each run in turn

    def run(self, ctx: SearchContext, candidates: list[HeadSpec]) -> None:
        from search import calibrate

        calibrate.calibrate(ctx)

    def report(self, study: optuna.Study, spec) -> dict[str, Any]:
        from search.calibrate_report import calibration_report

        return calibration_report(study, spec)

    def write_outputs(self, study, spec, report, url, out) -> dict[str, Any]:
        from search.calibrate_report import write_calibration
        from search.provenance import versions

        versions_now = study.user_attrs.get("versions") or versions()
        return write_calibration(spec, report["ranking"], out, study.study_name, versions_now)
