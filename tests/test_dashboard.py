"""optuna-dashboard as a first-class view of a search: through the dashboard's own REST API and
in a real browser (headless Chromium), a finished search's study shows metric names on its
plots, its note (the ranking and the recommended head) and the recommendation and plot as
downloadable artifacts. The screenshots are kept under ``$HSSL_TEST_ARTIFACTS`` (default
``.test-artifacts/``)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from search.run import run_search
from tests.cli_helpers import BIN
from tests.net_helpers import ReservedPort
from tests.search_helpers import tiny
from tests.waiting import wait_until

pytestmark = pytest.mark.slow
ARTIFACTS = Path(os.environ.get("HSSL_TEST_ARTIFACTS", ".test-artifacts"))


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read()


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """A finished tiny search (as `hssl search run` leaves it) served by optuna-dashboard."""
    data = tmp_path_factory.mktemp("dash")
    outcome = run_search(tiny(name="dash-demo"), data, progress=False, isolate=False)
    with ReservedPort() as port:  # held until the dashboard has stopped
        proc = subprocess.Popen(
            [
                str(BIN / "optuna-dashboard"),
                outcome.storage,
                "--artifact-dir",
                str(data / "artifacts"),
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, f"optuna-dashboard exited with {proc.returncode}"
            try:
                return bool(get(f"{base}/api/studies"))
            except OSError:
                return False

        try:
            wait_until(up, timeout=60, what="optuna-dashboard")
            yield base, outcome
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def study_detail(base: str, name: str) -> tuple[int, dict]:
    studies = json.loads(get(f"{base}/api/studies"))["study_summaries"]
    (study_id,) = [s["study_id"] for s in studies if s["study_name"] == name]
    return study_id, json.loads(get(f"{base}/api/studies/{study_id}?after=0"))


def test_the_rest_api_shows_metric_names_the_note_and_downloadable_artifacts(dashboard):
    base, outcome = dashboard
    study_id, detail = study_detail(base, "dash-demo")
    assert detail["objective_names"] == ["d_kl", "d_cka"]
    note = detail["note"]["body"]
    best = outcome.ranking["heads"][0]["label"]
    assert f"**Recommended head:** `{best}`" in note
    assert outcome.table.splitlines()[0] in note  # the ranking table itself
    assert "quality signal" in note  # the plain-language reading of the floor
    files = {a["filename"]: a for a in detail["artifacts"]}
    assert set(files) == {"recommendation.json", "recommendation.yaml", "ranking.png"}
    body = get(f"{base}/artifacts/{study_id}/{files['recommendation.yaml']['artifact_id']}")
    assert yaml.safe_load(body)["head_label"] == best
    png = get(f"{base}/artifacts/{study_id}/{files['ranking.png']['artifact_id']}")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    pytest.skip("no Chromium here (scripts/test.sh installs Debian's `chromium` as root)")


def render(url: str, screenshot: Path) -> str:
    """The page's text after its scripts ran, and a screenshot of it."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,2000"]
    flags.append("--virtual-time-budget=15000")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [browser(), *flags, f"--screenshot={screenshot.resolve()}", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    dom = subprocess.run(
        [browser(), *flags, "--dump-dom", url], capture_output=True, timeout=120, check=True
    ).stdout.decode()
    return html.unescape(re.sub(r"<[^>]+>", " ", dom))


def test_a_browser_shows_the_metric_names_the_note_and_the_artifacts(dashboard):
    base, outcome = dashboard
    study_id, _ = study_detail(base, "dash-demo")
    page = render(f"{base}/dashboard/studies/{study_id}", ARTIFACTS / "dashboard-study.png")
    assert "d_kl" in page and "d_cka" in page  # plot axes and history say the metrics
    assert "recommendation.yaml" in page and "ranking.png" in page  # the study's artifacts
    note = render(f"{base}/dashboard/studies/{study_id}/note", ARTIFACTS / "dashboard-note.png")
    assert "Recommended head" in note and outcome.ranking["heads"][0]["label"] in note
    for shot in ("dashboard-study.png", "dashboard-note.png"):
        assert (ARTIFACTS / shot).read_bytes()[:4] == b"\x89PNG"
