"""The registries are the only place a strategy or a metric is spelled out (issue 23): no
module compares a spec's strategy with a string, and every strategy is one registered class."""

from __future__ import annotations

import re
from pathlib import Path

from search.spec import SearchSpec, planned_runs
from search.strategy import STRATEGIES, Strategy, strategy_of

ROOT = Path(__file__).resolve().parents[1]
STRING_DISPATCH = re.compile(r"\.strategy\s*(==|!=)\s*[\"']|\.strategy\s+(not\s+)?in\s*[(\[{]")


def test_no_module_dispatches_on_the_strategy_string() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for package in ("search", "service", "training")
        for path in (ROOT / package).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if STRING_DISPATCH.search(line)
    ]
    assert offenders == []
    assert STRING_DISPATCH.search('if spec.strategy == "joint":')  # the pattern does bite
    assert STRING_DISPATCH.search('spec.strategy in ("optuna", "calibrate")')


def test_every_strategy_is_one_registered_class_the_spec_derives_from() -> None:
    names = list(STRATEGIES)
    assert names[:4] == ["joint", "independent", "optuna", "calibrate"]
    schema = SearchSpec.model_json_schema()
    assert schema["properties"]["strategy"]["enum"] == names
    for name, strategy in STRATEGIES.items():
        assert isinstance(strategy, Strategy) and strategy.name == name and strategy.summary
        assert strategy_of(name) is strategy
        assert name in schema["properties"]["strategy"]["description"]
    spec = SearchSpec.model_validate({"strategy": "optuna", "budget": {"trials": 5}})
    assert planned_runs(spec) == 5 and strategy_of(spec).parallel_runs(spec) == 5
    calibrate = SearchSpec.model_validate({"strategy": "calibrate"})
    assert calibrate.objectives == ["knn"]  # the strategy's own default
    assert strategy_of(calibrate).parallel_runs(calibrate) == 1
