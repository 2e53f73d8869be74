"""The staged strategy (issue 22): a joint screen, then paired independent runs of the kept
heads beside the baseline; the recommendation is a head that beat the baseline on the probe,
or the baseline. Pure judgement on constructed runs; a tiny staged search through the service
on SQLite and PostgreSQL; a kill -9 between the stages resumes into stage 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from search.records import TrialRecord
from search.spec import SearchSpec, planned_trials
from search.staged_report import decision, judge
from search.strategy import strategy_of
from tests.search_helpers import tiny

ROOT = Path(__file__).resolve().parents[1]


def rec(label: str, seed: int, linear: float, collapse: str = "ok") -> TrialRecord:
    return TrialRecord(
        number=seed,
        label=label,
        head=None,
        seed=seed,
        state="COMPLETE",
        strategy="independent",
        final={"linear": linear},
        collapse=collapse,
    )


def test_only_a_head_that_beats_the_baseline_is_recommended() -> None:
    wobble = [0.004, -0.003, 0.001, -0.002, 0.003, 0.0]
    base = [rec("baseline", s, 0.50 + w) for s, w in enumerate(wobble)]
    win = [rec("win", s, 0.55 + w + 0.002 * (s % 2)) for s, w in enumerate(wobble)]
    lose = [rec("lose", s, 0.47 + w - 0.002 * (s % 2)) for s, w in enumerate(wobble)]
    flat = [rec("flat", s, 0.50 + w + (0.01 if s % 2 else -0.01)) for s, w in enumerate(wobble)]
    verdicts = judge([*lose, *flat, *win], base, "linear", 0.05)
    first = verdicts[0]
    assert first.label == "win" and first.beat and first.lo > 0.04 and first.level > 0.95
    assert first.mean == pytest.approx(0.051, abs=1e-9)
    assert not next(v for v in verdicts if v.label == "lose").beat  # a clear loss: not a win
    assert not next(v for v in verdicts if v.label == "flat").beat
    assert decision(verdicts, "linear", 4)["recommend"] == "win"
    kept_out = decision(judge([*lose, *flat], base, "linear", 0.05), "linear", 4)
    assert kept_out["keep_baseline"] and kept_out["recommend"] is None
    assert kept_out["line"].startswith("keep the baseline (no head beat it: best flat")
    # a collapsed run drops its seed from the pairing
    collapsed = [rec("win", 0, 0.9, "uniform"), *win[1:]]
    assert judge(collapsed, base, "linear", 0.05)[0].seeds == (1, 2, 3, 4, 5)
    assert decision([], "linear", 3)["line"].startswith("keep the baseline (no head reached")


def test_the_staged_plan_from_the_spec() -> None:
    spec = tiny(strategy="staged", budget={"seeds": 1}, staged={"keep": 2, "seeds": 3})
    assert spec.objectives == ["d_kl"]  # the screen's default
    strategy = strategy_of(spec)
    assert planned_trials(spec) == 3 * 1 + 2 * 3
    assert strategy.confirm_seeds(spec) == [0, 1, 2]
    assert [s["planned"] for s in strategy.stages(spec)] == [3, 6]
    assert strategy.parallel_runs(spec) == 1 and strategy.confirm_width(spec) == 6
    with pytest.raises(ValueError, match="staged strategy screens with a joint run"):
        tiny(strategy="staged", objectives=["linear"])
    assert SearchSpec.model_json_schema()["properties"]["staged"]


KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from search.run import run_search
from tests.search_helpers import tiny

def on_event(kind, data):
    # the first run of stage 2 (its baseline): kill -9, after stage 1 is in the study
    if kind == "trial.started" and not data["run"].startswith("joint"):
        os.kill(os.getpid(), signal.SIGKILL)

spec = tiny(name="staged", strategy="staged", staged={{"keep": 2, "seeds": 2, "probe": "knn"}})
run_search(spec, {data!r}, progress=False, isolate=False, on_event=on_event)
"""


@pytest.mark.slow
def test_a_kill_9_between_the_stages_resumes_into_stage_2(tmp_path: Path) -> None:
    from search.run import run_search

    code = KILLER.format(root=str(ROOT), data=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    started: list[str] = []
    spec = tiny(name="staged", strategy="staged", staged={"keep": 2, "seeds": 2, "probe": "knn"})
    outcome = run_search(
        spec,
        tmp_path,
        resume=True,
        progress=False,
        isolate=False,
        on_event=lambda kind, data: (
            started.append(data["run"]) if kind == "trial.started" else None
        ),
    )
    assert outcome.status == "completed"
    assert not [r for r in started if r.startswith("joint")], started  # stage 1 not rerun
    assert sorted(r for r in started if r.startswith("baseline")) == ["baseline-s0", "baseline-s1"]
    assert len([r for r in started if not r.startswith(("joint", "baseline"))]) == 4  # 2 x 2
    ranking = outcome.ranking
    assert ranking["stages"]["kept"] and len(ranking["stages"]["screen"]) == 3
    assert [h["stage"] for h in ranking["heads"]] == [2, 2, 1]
    rec_file = json.loads(outcome.files["json"].read_text())
    if ranking["decision"]["keep_baseline"]:
        assert rec_file["head_label"] == "baseline" and rec_file["head"] is None
        assert rec_file["trial_config"]["heads"] == []
    else:
        assert rec_file["head_label"] == ranking["decision"]["recommend"]
    assert rec_file["decision"] == ranking["decision"]["line"]
    assert "stage 1 (screen)" in outcome.table and "screened out: screen rank 3" in outcome.table


@pytest.mark.slow
def test_a_staged_search_through_the_service(database_url, tmp_path, clean_env) -> None:
    from service.http.schemas import SearchResource
    from service.jobs.local import LocalDispatcher
    from service.persistence import reads
    from service.persistence.db import engine_of
    from tests.conftest import make_settings
    from tests.dispatch_helpers import events, job_rows, new_search, search_row, trials
    from tests.waiting import wait_until

    settings = make_settings(tmp_path, database_url, local_workers=2, heartbeat_s=1)
    spec = tiny(strategy="staged", staged={"keep": 2, "seeds": 2, "probe": "knn"})
    sid = new_search(settings, spec)
    dispatcher = LocalDispatcher(settings, 2, poll_s=0.5)
    dispatcher.start()
    try:
        dispatcher.submitted(sid, settings.queue)
        status = wait_until(
            lambda: (s := search_row(settings, sid).status) in ("completed", "failed") and s,
            timeout=600,
            what="the staged search",
        )
    finally:
        dispatcher.stop()
    row = search_row(settings, sid)
    assert status == "completed", row.error
    stages = [d["stage"] for k, d in events(settings, sid) if k == "search.stage"]
    assert stages[0] == 1 and stages[-1] == 2
    by_stage: dict[int, list] = {}
    for t in trials(settings, sid):
        by_stage.setdefault(t.attrs.get("stage"), []).append(t)
    assert len(by_stage[1]) == 3 and len(by_stage[2]) == 4  # 3 heads x 1 seed; 2 kept x 2
    assert {t.attrs["strategy"] for t in by_stage[2]} == {"independent"}
    progress = SearchResource.from_search(
        reads.search_status(engine_of(settings), row.tenant_id, sid)
    ).progress
    assert progress.stage["stage"] == 2 and len(progress.stage["kept"]) == 2
    assert progress.finished == planned_trials(spec) == 7
    assert len(job_rows(settings, sid)) >= 2  # stage 2 fanned out
    decision_ = row.ranking["decision"]
    expected = "baseline" if decision_["keep_baseline"] else decision_["recommend"]
    assert row.recommendation["head_label"] == expected
