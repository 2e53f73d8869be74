"""Every strategy end to end on tiny synthetic data, in process (fast), on a real SQLite study."""

import json

import optuna
import pytest
import torch
import yaml

from search.recommendation import load_recommendation
from search.run import open_study, run_search
from search.storage import make_storage, sqlite_url
from service.cli.train import load_config_file
from tests.search_helpers import tiny
from training.errors import HSSLError
from training.model.heads import create_head


def load(tmp_path, outcome) -> optuna.Study:
    return optuna.load_study(study_name=outcome.study, storage=make_storage(sqlite_url(tmp_path)))


@pytest.mark.slow
def test_joint_scores_every_head_of_one_run_and_recommends(tmp_path):
    events = []
    outcome = run_search(
        tiny(strategy="joint", include_baseline=True),
        tmp_path,
        progress=False,
        isolate=False,
        on_event=lambda kind, data: events.append((kind, data)),
    )
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "trial.started" and kinds.count("trial.finished") == 4  # 3 heads + baseline
    assert {"epoch", "knn_cls"} <= set(next(d for k, d in events if k == "trial.reported"))
    assert outcome.status == "completed"
    study = load(tmp_path, outcome)
    trials = study.get_trials()
    assert sorted(t.user_attrs["label"] for t in trials) == [
        "convnext-d1-k3-nores",
        "mlp-d1-nores",
        "transformer-d1-nores",
    ]
    for t in trials:  # what each trial records, for optuna-dashboard
        assert t.state.name == "COMPLETE" and t.values == [
            t.user_attrs["final"]["d_kl"],
            t.user_attrs["final"]["d_cka"],
        ]
        assert {"d_loss", "h_target", "d_kl", "d_cka"} <= set(t.user_attrs["init"])
        assert "knn_cls" in t.user_attrs["init"] and t.user_attrs["wall_time_s"] > 0
    assert study.user_attrs["sampler"]["name"] == "TPESampler"
    assert len(study.user_attrs["baseline"]) == 1
    ranking = json.loads(outcome.files["ranking"].read_text())
    assert ranking["heads"][0]["rank"] == 1 and ranking["baseline"]["n"] == 1
    assert "baseline" in outcome.table and "floor" in outcome.table
    assert outcome.files["plot"].read_bytes()[:4] == b"\x89PNG"
    # the evidence card, in the table, the ranking JSON and the recommendation file
    card = ranking["evidence"]
    assert card["ranked_by"] == ["d_kl", "d_cka"] and card["reference"]["heads"] >= 8
    assert card["why"].startswith(f"{ranking['heads'][0]['label']}: rank 1 on D_kl, D_cka")
    assert "evidence: ranked by D_kl, D_cka" in outcome.table
    assert json.loads(outcome.files["json"].read_text())["evidence"] == card


@pytest.mark.slow
def test_recommendation_round_trip_builds_the_head(tmp_path):
    outcome = run_search(tiny(), tmp_path, progress=False, isolate=False)
    rec = load_recommendation(outcome.files["yaml"])
    best = outcome.ranking["heads"][0]
    assert rec["head"] == best["head"] and rec["lineage"]["study"] == outcome.study
    assert rec["versions"]["torch"] == torch.__version__.split("+")[0] or rec["versions"]["torch"]
    assert rec["data"]["sha256"] and rec["data"]["images"] == 1000
    assert "hssl train --config recommendation.yaml" in rec["commands"]["train"]
    assert rec["commands"]["torchrun"].startswith("torchrun")
    finetune = rec["commands"]["finetune"]  # the paper's number: MAE's recipe on the export
    assert "finetune --recipe mae --init base.safetensors" in finetune
    assert rec["quality_signal"].startswith("quality signal:")
    config = load_config_file(outcome.files["yaml"])  # what `hssl train --config` reads
    assert config.heads[0].label() == rec["head_label"] and config.base.img_size == 224
    head = create_head(config.heads[0], 32)
    assert head(torch.randn(2, 32, 4, 4))[1].shape == (2, 32)
    assert yaml.safe_load(outcome.files["yaml"].read_text()) == json.loads(
        outcome.files["json"].read_text()
    )


@pytest.mark.slow
def test_independent_runs_each_candidate_and_seed(tmp_path):
    spec = tiny(strategy="independent", objectives=["knn", "d_kl"], budget={"seeds": 2})
    outcome = run_search(spec, tmp_path, progress=False, isolate=False)
    trials = load(tmp_path, outcome).get_trials()
    pairs = sorted((t.user_attrs["label"], t.user_attrs["seed"]) for t in trials)
    assert len(pairs) == 6 and len(set(pairs)) == 6
    assert all(
        t.state.name == "COMPLETE" and t.params["head"] == t.user_attrs["label"] for t in trials
    )
    head = outcome.ranking["heads"][0]
    assert head["n"] == 2 and head["sd"]["knn_cls"] is not None and "knn_cls" in head["gain"]
    assert "d_kl~knn_cls" in outcome.ranking["correlations"]


@pytest.mark.slow
def test_optuna_pareto_and_pruned_modes(tmp_path):
    spec = tiny(
        strategy="optuna",
        objectives=["knn", "d_cka"],
        budget={"trials": 3},
        space={"heads": None, "families": ["convnext", "mlp"], "depths": [1, 2]},
    )
    outcome = run_search(spec, tmp_path, progress=False, isolate=False)
    study = load(tmp_path, outcome)
    assert len(study.directions) == 2 and len(study.get_trials()) == 3
    assert {t.params["family"] for t in study.get_trials()} <= {"convnext", "mlp"}
    assert all("kernel" not in t.params for t in study.get_trials() if t.params["family"] == "mlp")
    pruned = tiny(
        strategy="optuna",
        optuna_mode="pruned",
        objectives=["knn"],
        name="pruned",
        budget={"trials": 3, "epochs": 2},
    )
    outcome = run_search(pruned, tmp_path, progress=False, isolate=False)
    study = load(tmp_path, outcome)
    assert len(study.directions) == 1 and study.user_attrs["pruner"]["name"] == "MedianPruner"
    assert {t.state.name for t in study.get_trials()} <= {"COMPLETE", "PRUNED"}


@pytest.mark.slow
def test_pruned_mode_with_the_default_objectives_optimises_the_first_and_ranks_on_all(tmp_path):
    spec = tiny(strategy="optuna", optuna_mode="pruned", budget={"trials": 3, "epochs": 2})
    assert spec.objectives == ["d_kl", "d_cka"]  # the defaults: two objectives
    outcome = run_search(spec, tmp_path, progress=False, isolate=False)
    study = load(tmp_path, outcome)
    assert len(study.directions) == 1
    finished = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert finished and all(t.value == t.user_attrs["final"]["d_kl"] for t in finished)
    assert all("d_cka" in t.user_attrs["final"] for t in finished)
    assert outcome.ranking["heads"], outcome.table


@pytest.mark.slow
def test_prescreen_trains_only_the_top_candidates(tmp_path):
    spec = tiny(
        strategy="independent",
        objectives=["d_kl"],
        budget={"prescreen_keep": 2, "prescreen_images": 80},
    )
    outcome = run_search(spec, tmp_path, progress=False, isolate=False)
    study = load(tmp_path, outcome)
    scores = study.user_attrs["prescreen"]
    assert len(scores) == 3 and len(study.user_attrs["prescreen_kept"]) == 2
    best_two = sorted(scores, key=lambda label: -scores[label]["d_kl"])[:2]
    assert sorted(study.user_attrs["prescreen_kept"]) == sorted(best_two)
    assert sorted(t.user_attrs["label"] for t in study.get_trials()) == sorted(best_two)


@pytest.mark.slow
def test_all_candidates_failing_gives_reasons_and_no_recommendation(tmp_path):
    spec = tiny(strategy="independent", trial_overrides={"student_temp": 1e-45})
    outcome = run_search(spec, tmp_path, progress=False, isolate=False)
    trials = load(tmp_path, outcome).get_trials()
    assert len(trials) == 3 and all(t.state.name == "FAIL" for t in trials)
    assert all("loss became" in t.user_attrs["failure_reason"] for t in trials)
    assert "json" not in outcome.files and "failed" in outcome.table


@pytest.mark.slow
def test_interrupted_search_resumes_without_repeating_trials(tmp_path):
    spec = tiny(strategy="independent", name="resumable")
    calls = {"n": 0}

    def cancel_after_first() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    first = run_search(
        spec, tmp_path, progress=False, isolate=False, should_cancel=cancel_after_first
    )
    assert first.status == "cancelled" and len(load(tmp_path, first).get_trials()) == 1
    with pytest.raises(HSSLError, match="already exists"):
        run_search(spec, tmp_path, progress=False, isolate=False)
    resumed = run_search(spec, tmp_path, resume=True, progress=False, isolate=False)
    labels = [t.user_attrs["label"] for t in load(tmp_path, resumed).get_trials()]
    assert resumed.status == "completed" and sorted(labels) == sorted(set(labels))
    assert len(labels) == 3
    with pytest.raises(HSSLError, match="different spec"):
        run_search(
            spec.model_copy(update={"seed": 9}),
            tmp_path,
            resume=True,
            progress=False,
            isolate=False,
        )


@pytest.mark.slow
def test_same_spec_and_seed_give_the_same_ranking(tmp_path):
    spec = tiny(strategy="joint")
    a = run_search(spec, tmp_path / "a", progress=False, isolate=False).ranking
    b = run_search(spec, tmp_path / "b", progress=False, isolate=False).ranking
    assert [r["label"] for r in a["heads"]] == [r["label"] for r in b["heads"]]
    assert [r["mean"]["d_kl"] for r in a["heads"]] == [r["mean"]["d_kl"] for r in b["heads"]]


@pytest.mark.slow
def test_a_joining_process_skips_the_runs_another_is_running_and_leaves_them_alone(tmp_path):
    spec = tiny(strategy="independent", name="shared")
    labels = [h.label() for h in spec.space.candidates()]
    study = open_study(spec, sqlite_url(tmp_path), resume=True)
    busy = study.ask()  # another live process is running the first head's seed-0 run
    for key, value in {"label": labels[0], "seed": 0, "strategy": "independent"}.items():
        busy.set_user_attr(key, value)

    outcome = run_search(
        spec, tmp_path, resume=True, progress=False, isolate=False, reconcile=False
    )
    trials = optuna.load_study(study_name="shared", storage=sqlite_url(tmp_path)).trials
    assert trials[0].state == optuna.trial.TrialState.RUNNING  # not failed as an orphan
    ran = sorted(t.user_attrs["label"] for t in trials[1:])
    assert ran == sorted(labels[1:]) and outcome.reconciled == []
