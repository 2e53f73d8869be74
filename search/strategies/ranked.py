"""What the strategies that train candidate heads share: a report ranked by the spec's
objectives and the outputs of a ranking (JSON, plot, recommendation of its first head)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.strategy import Strategy

if TYPE_CHECKING:
    from pathlib import Path

    import optuna

    from search.spec import SearchSpec


class Ranked(Strategy):
    def report(self, study: optuna.Study, spec: SearchSpec) -> dict[str, Any]:
        from search.run import ranking_report

        return ranking_report(study, spec)

    def write_outputs(
        self, study: optuna.Study, spec: SearchSpec, report: dict[str, Any], url: str, out: Path
    ) -> dict[str, Path]:
        from search.run import write_ranking_outputs

        return write_ranking_outputs(study, spec, report, url, out)
