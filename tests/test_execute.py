"""execute_search: a stored search runs to its end (trials in child processes), writing
events, trial rows, ranking and recommendation; a cancel stops the run in flight; a search
whose every trial fails completes without a recommendation. (How fast a cancel lands is
CANCEL_POLL_S plus the supervisor's 1 s poll: a design bound, not timed here.)"""

import threading

import pytest

import search.run as search_run
from service.jobs.execute import execute_search
from tests.dispatch_helpers import cancel, events, new_search, search_row, trials
from tests.search_helpers import tiny
from tests.waiting import wait_until


@pytest.mark.slow
def test_a_search_runs_to_completed_with_events_trials_and_results(settings, monkeypatch):
    sid = new_search(settings, tiny(strategy="joint"))
    assert execute_search(settings, sid) == "completed"

    search = search_row(settings, sid)
    assert search.status == "completed" and search.error is None
    assert search.started_at is not None and search.finished_at is not None
    assert (search.planned, search.finished, search.failed) == (3, 3, 0)
    assert search.ranking["heads"] and search.best["label"] == search.ranking["heads"][0]["label"]
    assert search.recommendation["schema"].startswith("hssl")
    rows = trials(settings, sid)
    assert [t.number for t in rows] == [0, 1, 2]
    assert {t.state for t in rows} == {"COMPLETE"} and all(t.values for t in rows)

    kinds = [kind for kind, _ in events(settings, sid)]
    assert kinds[:3] == ["search.queued", "search.running", "trial.started"]
    assert "trial.reported" in kinds and kinds.count("trial.finished") == 3
    assert kinds[-1] == "search.completed"
    reported = next(data for kind, data in events(settings, sid) if kind == "trial.reported")
    assert {"run", "epoch", "knn_cls"} <= set(reported)
    # progress inside the run (from its child process): where it is within each epoch
    steps = [data for kind, data in events(settings, sid) if kind == "trial.progress"]
    assert steps and steps[-1]["run"] == "joint-s0" and steps[-1]["step"] == steps[-1]["steps"]
    assert steps[-1]["epoch"] == steps[-1]["epochs"] == 1 and steps[-1]["images_per_s"] > 0

    # idempotent: a final search runs nothing and writes nothing
    ran: list = []
    monkeypatch.setattr(search_run, "run_search", lambda *args, **kw: ran.append(args))
    assert execute_search(settings, sid) == "completed"
    assert ran == [] and len(events(settings, sid)) == len(kinds)
    assert search_row(settings, sid).finished_at == search.finished_at


@pytest.mark.slow
def test_a_cancel_requested_while_running_ends_cancelled_stopping_the_run_in_flight(
    sqlite_database_url, tmp_path
):
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, sqlite_database_url)
    spec = tiny(strategy="independent", budget={"epochs": 200, "data_limit": 320})
    sid = new_search(settings, spec)
    result = {}
    runner = threading.Thread(target=lambda: result.update(status=execute_search(settings, sid)))
    runner.start()
    wait_until(
        lambda: any(k == "trial.reported" for k, _ in events(settings, sid)),
        timeout=180,
        what="the first epoch report",
    )
    assert cancel(settings, sid) == "cancelling"
    runner.join(timeout=120)  # a bound for a hang, not a speed check
    assert not runner.is_alive() and result["status"] == "cancelled"
    search = search_row(settings, sid)
    assert search.status == "cancelled" and search.finished_at is not None
    assert search.finished < search.planned  # it stopped early
    kinds = [k for k, _ in events(settings, sid)]
    assert "search.cancelling" in kinds and kinds[-1] == "search.cancelled"
    after = kinds[kinds.index("search.cancelling") :]
    assert "trial.started" not in after  # nothing new began once the cancel was asked
    epochs = [d["epoch"] for k, d in events(settings, sid) if k == "trial.reported"]
    assert max(epochs) < 200  # the run in flight was stopped, not trained to its end


@pytest.mark.slow
def test_a_search_whose_every_trial_fails_completes_without_recommendation(settings):
    # (on PostgreSQL too: failed trials carry NaN losses, which its json type refuses)
    spec = tiny(strategy="joint", trial_overrides={"student_temp": 1e-45})
    sid = new_search(settings, spec)
    assert execute_search(settings, sid) == "completed"
    search = search_row(settings, sid)
    assert search.status == "completed" and search.error is None
    assert search.recommendation is None and search.best is None
    assert search.ranking is not None and (search.finished, search.failed) == (3, 3)
    rows = trials(settings, sid)
    assert len(rows) == 3 and {t.state for t in rows} == {"FAIL"}
    assert all(t.attrs.get("failure_reason") for t in rows)


def test_an_unrunnable_spec_fails_the_search_with_a_one_line_error(settings):
    sid = new_search(settings, tiny(strategy="joint"))
    # a different spec under the same study name: run_search refuses to resume it
    from service.persistence.db import engine_of, session_scope
    from service.persistence.models import Search

    with session_scope(engine_of(settings)) as s:
        search = s.get(Search, sid)
        search.spec = {**search.spec, "space": {"heads": ["not-a-family:depth=1"]}}
    assert execute_search(settings, sid) == "failed"
    search = search_row(settings, sid)
    assert search.status == "failed" and search.error and "\n" not in search.error
    assert events(settings, sid)[-1] == ("search.failed", {"error": search.error})


def test_a_search_out_of_time_completes_on_its_finished_runs_and_says_so(settings):
    """The out-of-time ending is its own outcome: the search completes, ranked on the runs it
    finished, with a ``search.out_of_time`` event giving the reason (never a silent complete)."""
    import time

    from training.recipe import TrialResult

    def slow_stand_in(config, report=None, **_):
        time.sleep(1.2)  # past the 1 s budget after the first run
        return TrialResult(
            status="completed", epochs_done=1, metrics={"knn_cls": 0.5, "d_kl": 0.3, "heads": []}
        )

    spec = tiny(strategy="independent", objectives=["d_kl"], budget={"wall_clock_s": 1})
    sid = new_search(settings, spec)
    search_run.use_trial_runner(slow_stand_in)
    try:
        assert execute_search(settings, sid) == "completed"
    finally:
        search_run.use_trial_runner(None)
    search = search_row(settings, sid)
    assert search.status == "completed" and 0 < search.finished < search.planned
    told = [data for kind, data in events(settings, sid) if kind == "search.out_of_time"]
    assert len(told) == 1 and "wall-clock budget of 1 s ran out" in told[0]["reason"]
