"""Proxy calibration (strategy ``calibrate``, ``hssl search calibrate``) on tiny synthetic data:
the scoring rule on constructed results, real seeded studies in process, the CLI end to end."""

import json

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution

from search.calibrate import RECIPE_SPACE, calibrate, score
from search.calibrate_report import calibration_report
from search.context import SearchContext
from search.run import open_study, run_search
from search.spec import SearchSpec
from search.storage import make_storage, sqlite_url
from search.trial_process import run_trial_inline
from tests.search_helpers import TINY_SEARCH, tiny
from training.errors import HSSLError
from training.recipe import TrialResult

OK_FINAL = {"knn_cls": 0.6, "linear": 0.7, "collapse": "ok", "target_entropy": 2.0, "ln_k": 4.16}
INIT = {"knn_cls": 0.5, "linear": 0.4, "collapse": "ok"}


def result(status="completed", wall=30.0, **final) -> TrialResult:
    return TrialResult(
        status=status, init_metrics=INIT, metrics={**OK_FINAL, **final}, wall_time_s=wall
    )


def test_score_is_probe_gain_over_the_floor_per_minute():
    assert score(result(), "knn_cls").value == pytest.approx((0.6 - 0.5) / 0.5)
    assert score(result(wall=60.0), "linear").value == pytest.approx(0.7 - 0.4)
    assert score(result(knn_cls=0.45), "knn_cls").value == pytest.approx(-0.1)  # below floor


@pytest.mark.parametrize(
    "run_result, reason",
    [
        (result(collapse="uniform", target_entropy=4.15), "collapsed: uniform global targets"),
        (result(collapse="one-hot"), "collapsed: one-hot"),
        (result(collapse=None), "collapse not measured"),
        (result(knn_cls=float("nan")), "no finite knn_cls probe"),
        (TrialResult(status="failed", reason="loss became nan"), "loss became nan"),
        (TrialResult(status="stopped", reason="collapsed: uniform targets"), "collapsed"),
    ],
)
def test_collapsed_or_failed_runs_do_not_count(run_result, reason):
    scored = score(run_result, "knn_cls")
    assert scored.value is None and reason in scored.reason


def test_the_strategy_is_a_search_spec_and_defaults_to_the_knn_probe():
    spec = tiny(strategy="calibrate")
    assert spec.objectives == ["knn"] and spec.strategy == "calibrate"
    again = SearchSpec.model_validate(spec.model_dump(mode="json"))  # what a worker reloads
    assert again == spec
    assert tiny(strategy="calibrate", objectives=["linear"]).objectives == ["linear"]
    with pytest.raises(ValueError, match="calibrate strategy maximises one probe's gain"):
        tiny(strategy="calibrate", objectives=["d_kl", "d_cka"])


@pytest.mark.slow
def test_a_seeded_calibration_ranks_recipes_and_its_best_round_trips(tmp_path):
    spec = tiny(strategy="calibrate", budget={"trials": 3})
    outcome = run_search(spec, tmp_path, progress=False, isolate=False)
    study = optuna.load_study(study_name=outcome.study, storage=make_storage(sqlite_url(tmp_path)))
    trials = study.get_trials()
    assert outcome.status == "completed" and len(trials) == 3
    for t in trials:  # the knobs are the Optuna params; collapsed runs are never COMPLETE
        assert set(t.params) == set(RECIPE_SPACE) and t.user_attrs["strategy"] == "calibrate"
        collapsed = t.user_attrs["collapse"] != "ok"
        assert (t.state.name == "FAIL") == collapsed, t.user_attrs["failure_reason"]
        assert t.user_attrs["minutes"] > 0 and "knn_cls" in t.user_attrs["init"]
    assert "gain/min" in outcome.table and "teacher_temp" in outcome.table
    recipe = outcome.ranking["trial_overrides"]  # seeded: these recipes do not collapse
    assert recipe is not None, outcome.table
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert recipe == {**TINY_SEARCH["trial_overrides"], **best.params}
    pasted = yaml.safe_load(outcome.files["recipe"].read_text())["trial_overrides"]
    used = SearchSpec.model_validate({**TINY_SEARCH, "trial_overrides": pasted})
    assert used.trial_config((), 0).teacher_temp == best.params["teacher_temp"]
    rec = json.loads(outcome.files["json"].read_text())
    assert rec["trial_overrides"] == recipe and rec["metrics"]["trials"] == [best.number]
    assert SearchSpec.model_validate(rec["search_spec"]).trial_overrides == recipe


def test_a_really_collapsed_run_is_a_failed_trial_with_its_reason(tmp_path):
    """A hot teacher (τt ≈ 5) makes the real targets uniform: the trial fails, unranked."""
    spec = tiny(strategy="calibrate", budget={"trials": 1})
    study = open_study(spec, sqlite_url(tmp_path), resume=False)
    ctx = SearchContext(spec, study, tmp_path / "runs", run_trial_inline)
    calibrate(ctx, space={"teacher_temp": FloatDistribution(4.0, 6.0)})
    (trial,) = study.get_trials()
    assert trial.state.name == "FAIL" and trial.user_attrs["collapse"] == "uniform"
    assert trial.user_attrs["failure_reason"].startswith("collapsed: uniform global targets")
    report = calibration_report(study, spec)
    assert report["ranking"]["trial_overrides"] is None
    assert report["ranking"]["heads"][0]["rank"] == 0
    assert "failed: recipe-0: collapsed: uniform" in report["table"]


def hssl(*args: str):
    """The CLI in process (typer's runner): exit code, stdout and stderr apart."""
    from typer.testing import CliRunner

    from service.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_cli_calibrates_a_head_search_spec_and_writes_the_recipe(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({**TINY_SEARCH, "name": "mine", "objectives": ["d_kl"]}))
    out = tmp_path / "recipe.yaml"
    flags = ["--trials", "2", "--data-dir", tmp_path / "data", "--out", out, "--no-progress"]
    flags.append("--no-isolate")  # child processes: the service test below
    result = hssl("search", "calibrate", spec_file, *flags)
    assert result.exit_code == 0, result.output
    assert "calibration mine-calibrate: completed" in result.stdout  # not the search's name
    assert "gain/min" in result.stdout and "recipe-1" in result.stdout
    recipe = yaml.safe_load(out.read_text())["trial_overrides"]
    assert set(RECIPE_SPACE) <= set(recipe) and "paste" in out.read_text()
    assert SearchSpec.model_validate({**TINY_SEARCH, "trial_overrides": recipe})


def test_cli_bad_input_gets_one_line(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    for body, flags, expected in [
        ("strategy: calibrate\nbudget: {trials: 0}\n", [], "budget.trials: Input should be"),
        (
            "data: synthetic\n",
            ["--probe", "d_kl"],
            "--probe must be one of ['knn', 'linear', 'finetune']",
        ),
        ("- not a mapping\n", [], "does not hold a mapping"),
        ("base: {name: vit_tny_patch16_224}\n", [], "did you mean"),
    ]:
        spec_file.write_text(body)
        result = hssl("search", "calibrate", spec_file, "--data-dir", tmp_path / "d", *flags)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
        assert expected in lines[0] and result.stdout == ""
    assert not (tmp_path / "d").exists()


def test_the_cli_spec_takes_the_probe_and_trials_from_its_flags(tmp_path):
    from service.cli.search import calibration_spec

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({**TINY_SEARCH, "strategy": "calibrate"}))
    assert calibration_spec(spec_file, 4, "linear").objectives == ["linear"]
    assert calibration_spec(spec_file, None, None).budget.trials == 8
    with pytest.raises(HSSLError, match="--probe"):
        calibration_spec(spec_file, None, "knn_cls")


@pytest.mark.slow
def test_the_service_runs_a_submitted_calibration_and_stores_its_recipe(
    sqlite_database_url, tmp_path
):
    """What POST /v1/searches accepts (strict validation), run as a worker runs it: each
    trial in a child process, ranking and recommendation stored for the REST routes."""
    from service.http.submission import validate_spec
    from service.jobs.execute import execute_search
    from tests.conftest import make_settings
    from tests.dispatch_helpers import new_search, search_row, trials

    budget = {**TINY_SEARCH["budget"], "trials": 1}
    spec = validate_spec({**TINY_SEARCH, "strategy": "calibrate", "budget": budget})
    settings = make_settings(tmp_path, sqlite_database_url)
    sid = new_search(settings, spec)
    assert execute_search(settings, sid) == "completed"
    search = search_row(settings, sid)
    assert search.planned == search.finished == 1 and search.ranking["kind"] == "calibrate"
    assert [(t.label, t.state) for t in trials(settings, sid)] == [("recipe-0", "COMPLETE")]
    assert search.best["label"] == "recipe-0" and search.best["recipe"]
    assert search.recommendation["trial_overrides"] == search.ranking["trial_overrides"]
