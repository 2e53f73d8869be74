"""budget.stop_when_stable: the joint search stops a run once its discrepancy order settles."""

import optuna
import pytest

from search.run import run_search
from search.stability import StableRanking, head_order
from search.storage import make_storage, sqlite_url
from tests.search_helpers import tiny


def evaluation(**heads: tuple[float, float]) -> dict:
    return {"heads": [{"head": h, "d_kl": kl, "d_cka": cka} for h, (kl, cka) in heads.items()]}


def test_head_order_is_the_mean_rank_over_objectives_ties_by_label():
    m = evaluation(a=(0.1, 0.9), b=(0.5, 0.5), c=(0.9, 0.1), d=(0.0, 0.0))
    # d_kl ranks c, b, a, d; d_cka ranks a, b, c, d: a, b, c tie on mean rank 2, d is last
    assert head_order(m, ["d_kl", "d_cka"]) == ("a", "b", "c", "d")
    assert head_order(m, ["d_kl"]) == ("c", "b", "a", "d")
    assert head_order({"knn_cls": 0.5}, ["d_kl"]) is None  # no head rows (the baseline)
    assert head_order(evaluation(a=(float("nan"), 0.1)), ["d_kl"]) is None


def test_stable_ranking_stops_after_patience_unchanged_evaluations():
    tracker = StableRanking(["d_kl"], patience=2)
    same, other = evaluation(a=(1.0, 0), b=(0.5, 0)), evaluation(a=(0.1, 0), b=(0.5, 0))
    assert not tracker.update(0, same)  # the initial ranking never counts
    assert not tracker.update(1, same)
    assert not tracker.update(2, other)  # changed: start again
    assert not tracker.update(3, other)
    assert tracker.update(4, other) and tracker.stopped_at == 4


@pytest.mark.slow
def test_joint_search_stops_when_stable_and_counts_the_run_as_complete(tmp_path):
    spec = tiny(strategy="joint", budget={"epochs": 6, "stop_when_stable": 1})
    outcome = run_search(spec, tmp_path, progress=False, isolate=False)
    study = optuna.load_study(study_name=outcome.study, storage=make_storage(sqlite_url(tmp_path)))
    trials = study.get_trials()
    assert outcome.status == "completed" and len(trials) == 3
    assert all(t.state.name == "COMPLETE" for t in trials)
    done = {t.user_attrs["epochs_done"] for t in trials}
    assert len(done) == 1  # one shared run
    epochs_done = done.pop()
    per_epoch = [
        {"heads": [{"head": t.user_attrs["label"], **t.user_attrs["curve"][i]} for t in trials]}
        for i in range(epochs_done)
    ]
    orders = [head_order(m, spec.objectives) for m in per_epoch]
    first_repeat = next(e for e in range(1, 6) if orders[e] == orders[e - 1]) + 1
    assert epochs_done == first_repeat < 6  # stopped at the first unchanged evaluation
    assert outcome.files.get("json") is not None  # a recommendation was written
