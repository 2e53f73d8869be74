"""The registries are the only place a strategy or a metric is spelled out (issue 23): no
module compares a spec's strategy with a string, and every strategy is one registered class."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from search.spec import SearchSpec, planned_trials
from search.strategy import STRATEGIES, Strategy, strategy_of

ROOT = Path(__file__).resolve().parents[1]
# a spec's strategy (``spec.strategy``; the CLI's ``plain``) compared with a literal; a trial's
# or record's ``strategy`` is the tag of the run it holds (joint, independent, baseline)
STRING_DISPATCH = re.compile(
    r"\b(spec|plain)\.strategy\s*(==|!=)\s*[\"']|\b(spec|plain)\.strategy\s+(not\s+)?in\s*[(\[{]"
)


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
    assert planned_trials(spec) == 5 and strategy_of(spec).parallel_runs(spec) == 5
    calibrate = SearchSpec.model_validate({"strategy": "calibrate"})
    assert calibrate.objectives == ["knn"]  # the strategy's own default
    assert strategy_of(calibrate).parallel_runs(calibrate) == 1


# where metric names may still be written as a list: the code that computes them, and the
# OpenAPI examples (documentation of one response)
MAY_LIST_METRICS = {
    "training/evaluation/evaluate.py": "collapse_metrics computes these diagnostics",
    "service/http/schemas.py": "an OpenAPI example",
    "service/http/routes/searches.py": "an OpenAPI example",
}


def metric_lists() -> list[str]:
    """Every tuple/list/set literal in search/, service/, training/ holding two or more
    registered metric keys or objective names (outside the registry and MAY_LIST_METRICS)."""
    from training.metrics import REGISTRY

    names = set(REGISTRY) | {m.objective for m in REGISTRY.values() if m.objective}
    found = []
    for package in ("search", "service", "training"):
        for path in (ROOT / package).rglob("*.py"):
            where = str(path.relative_to(ROOT))
            if where == "training/metrics.py" or where in MAY_LIST_METRICS:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                    hits = [
                        e.value
                        for e in node.elts
                        if isinstance(e, ast.Constant) and e.value in names
                    ]
                    if len(hits) >= 2:
                        found.append(f"{where}:{node.lineno}: {hits}")
    return found


def test_no_hand_kept_metric_list_outside_the_registry() -> None:
    assert metric_lists() == []


NEW_METRIC = """
import training.metrics as m
m.register(m.Metric("lidar", "LiDAR", "label_free", "base", objective="lidar"))
from search.objectives import BASE_ESTIMATORS, METRIC_OF, direction_of
from search.ranking import correlations
from search.records import METRICS, RUN_KEYS, TrialRecord
from search.spec import SearchSpec
assert METRIC_OF["lidar"] == "lidar" and "lidar" in BASE_ESTIMATORS
assert direction_of("lidar") == "maximize" and "lidar" in RUN_KEYS and "lidar" in METRICS
SearchSpec.model_validate({"strategy": "independent", "objectives": ["lidar"]})
runs = [TrialRecord(number=i, label=f"h{i}", head=None, seed=0, state="COMPLETE",
        strategy="independent", final={"lidar": float(i), "knn_cls": 0.1 * i}) for i in range(4)]
assert correlations(runs)["lidar~knn_cls"]["rho"] == 1.0
print("ok")
"""


def test_a_new_metric_is_one_registration() -> None:
    """A metric declared in the registry (here before anything reads it, as a line added to
    training/metrics.py would be) is an objective, a record key and a correlation column."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", NEW_METRIC], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


NEW_STRATEGY = """
import search.strategy as st
from search.strategies.independent import Independent

@st.register
class FirstSeedOnly(Independent):  # one new module's worth: a class and its registration
    name = "first-seed"
    summary = "independent runs on the first seed only"

    def planned_trials(self, spec):
        return self.candidates(spec)

from search.run import run_search, use_trial_runner
from search.spec import SearchSpec, planned_trials
from training.recipe import TrialResult

def stand_in(config, report=None, **_):
    d_kl = 0.1 * len(config.heads[0].label()) if config.heads else 0.0
    return TrialResult(status="completed", epochs_done=1,
                       metrics={"knn_cls": 0.5, "d_kl": d_kl, "heads": []})

use_trial_runner(stand_in)
spec = SearchSpec.model_validate({
    "strategy": "first-seed", "objectives": ["d_kl"], "include_baseline": False,
    "data": "synthetic", "space": {"heads": ["mlp:depth=1", "convnext:depth=1,kernel=3"]},
    "budget": {"seeds": 1}})
assert "first-seed" in SearchSpec.model_json_schema()["properties"]["strategy"]["enum"]
assert planned_trials(spec) == 2 and st.strategy_of(spec).directions(spec) == ["maximize"]
outcome = run_search(spec, sys.argv[1], progress=False)
assert outcome.status == "completed" and outcome.ranking["heads"], outcome
print("ok")
"""


def test_a_new_strategy_is_one_registration(tmp_path) -> None:
    """A strategy declared as one registered class (here in the test, as a module added to
    search/strategies/ would be) is a spec literal, plans, has directions, runs and reports."""
    import subprocess
    import sys

    code = "import sys\n" + NEW_STRATEGY
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
