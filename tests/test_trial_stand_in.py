"""A bench or test passes a stand-in for training into ``search.run`` (``use_trial_runner``);
production reads no switch for it (issue 23)."""

from __future__ import annotations

import pytest

from search import run as search_run
from search.trial_process import run_trial_inline, run_trial_isolated
from tests.search_helpers import tiny
from training.recipe import TrialResult


@pytest.fixture
def restore():
    yield
    search_run.use_trial_runner(None)


def test_a_stand_in_runs_every_trial_and_none_trains_again(tmp_path, restore):
    seen = []

    def stand_in(config, report=None, **_):
        seen.append((config.heads[0].label() if config.heads else "baseline", config.seed))
        d_kl = 0.1 * len(seen)
        return TrialResult(
            status="completed",
            epochs_done=1,
            metrics={"knn_cls": 0.5, "d_kl": d_kl, "d_cka": 0.2, "heads": []},
        )

    search_run.use_trial_runner(stand_in)
    assert search_run.runner_for(True) is stand_in
    spec = tiny(strategy="independent", objectives=["d_kl"], include_baseline=False)
    outcome = search_run.run_search(spec, tmp_path, progress=False)
    assert outcome.status == "completed"
    assert sorted(seen) == sorted((c.label(), spec.seed) for c in spec.space.candidates())
    assert not list(tmp_path.rglob("checkpoint.pt"))  # nothing trained
    search_run.use_trial_runner(None)
    assert search_run.runner_for(True) is run_trial_isolated
    assert search_run.runner_for(False) is run_trial_inline
