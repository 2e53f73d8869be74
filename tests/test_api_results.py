"""Results, events and operations through real HTTP, on SQLite and PostgreSQL: trials, ranking
and recommendation downloads, the SSE stream (order, Last-Event-ID, pings, its end), health,
readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import pytest
import yaml

from service.cli.client import parse_sse
from service.http.app import create_app
from tests.api_helpers import (
    PROBLEM,
    RANKING,
    RECOMMENDATION,
    Api,
    assert_problem,
    live_server,
    spec,
)
from tests.waiting import wait_until


@pytest.fixture
def submitted(api):
    """(api, client, search id) of one queued search."""
    http = api.client(api.tenant("acme"))
    return api, http, http.post("/v1/searches", json=spec()).json()["id"]


# ---- trials, ranking, recommendation -----------------------------------------------------
def test_trials_are_paged_by_number(submitted):
    api, http, sid = submitted
    assert http.get(f"/v1/searches/{sid}/trials").json() == {"items": [], "next_after": None}
    for number, state in [(0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE")]:
        api.save_trial(sid, number, state)
    page = http.get(f"/v1/searches/{sid}/trials", params={"limit": 2}).json()
    assert [t["number"] for t in page["items"]] == [0, 1] and page["next_after"] == 1
    first = page["items"][0]
    assert first["label"] == "convnext-d0" and first["state"] == "COMPLETE"
    assert first["values"] == [0.5, 0.1] and first["attrs"]["wall_time_s"] == 2.5
    rest = http.get(f"/v1/searches/{sid}/trials", params={"limit": 2, "after": 1}).json()
    assert [t["number"] for t in rest["items"]] == [2] and rest["next_after"] is None
    assert http.get(f"/v1/searches/{sid}").json()["progress"] == {
        "planned": 1,
        "running": 0,
        "finished": 3,
        "failed": 1,
        "stage": None,
    }
    for after in (-2, 2**64):
        assert_problem(http.get(f"/v1/searches/{sid}/trials", params={"after": after}), 422)


def test_ranking_and_recommendation_are_409_until_ready_then_download(submitted):
    api, http, sid = submitted
    for what in ("ranking", "recommendation"):
        body = assert_problem(http.get(f"/v1/searches/{sid}/{what}"), 409, "not-ready")
        assert f"no {what} yet" in body["detail"] and body["search_status"] == "queued"
    api.finish(sid, RANKING, RECOMMENDATION)
    search = http.get(f"/v1/searches/{sid}").json()
    assert search["status"] == "completed" and search["best"]["label"] == "convnext-d2-k5"
    assert http.get(f"/v1/searches/{sid}/ranking").json() == RANKING

    r = http.get(f"/v1/searches/{sid}/recommendation")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.headers["content-disposition"] == (f'attachment; filename="recommendation-{sid}.json"')
    assert r.json() == RECOMMENDATION
    for kwargs in [
        {"params": {"format": "yaml"}},
        {"headers": {"Accept": "application/yaml"}},
        {"headers": {"Accept": "text/yaml;q=0.9, */*;q=0.1"}},
    ]:
        r = http.get(f"/v1/searches/{sid}/recommendation", **kwargs)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/yaml")
        assert r.headers["content-disposition"].endswith(f'recommendation-{sid}.yaml"')
        assert yaml.safe_load(r.text) == RECOMMENDATION
    r = http.get(
        f"/v1/searches/{sid}/recommendation",
        params={"format": "json"},
        headers={"Accept": "application/yaml"},
    )
    assert r.json() == RECOMMENDATION
    assert_problem(http.get(f"/v1/searches/{sid}/recommendation", params={"format": "xml"}), 422)


def test_a_completed_search_without_a_recommendation_says_why(submitted):
    api, http, sid = submitted
    api.finish(sid, {"heads": []}, None)
    body = assert_problem(http.get(f"/v1/searches/{sid}/recommendation"), 409)
    assert "completed" in body["detail"]
    assert http.get(f"/v1/searches/{sid}").json()["best"] is None


# ---- events ------------------------------------------------------------------------------
def read_events(http, sid, last_id=None, timeout=20):
    headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
    with http.stream("GET", f"/v1/searches/{sid}/events", headers=headers, timeout=timeout) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return list(parse_sse(r.iter_lines()))


def test_events_in_order_resume_after_last_event_id_and_end(submitted):
    api, http, sid = submitted
    api.set_status(sid, "running")
    api.add_event(sid, "trial.started", {"run": 0, "heads": ["convnext"], "seed": 0})
    api.add_event(sid, "trial.reported", {"run": 0, "epoch": 1, "loss": 1.5, "note": "a\nb"})
    api.set_status(sid, "completed")
    events = read_events(http, sid)
    kinds = [e.kind for e in events]
    assert kinds == [
        "search.queued",
        "search.running",
        "trial.started",
        "trial.reported",
        "search.completed",
    ]
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert events[0].data == {"planned": 1} and events[3].data["note"] == "a\nb"
    resumed = read_events(http, sid, last_id=ids[2])
    assert [e.id for e in resumed] == ids[3:]
    assert read_events(http, sid, last_id=ids[-1], timeout=5) == []  # after the end: closes
    api.add_event(sid, "trial.finished", {"number": 9})  # a straggler after the final event
    late = read_events(http, sid, last_id=ids[-1], timeout=5)
    assert [e.kind for e in late] == ["trial.finished"]
    for bad in ["x", "-1", str(2**64)]:
        r = http.get(f"/v1/searches/{sid}/events", headers={"Last-Event-ID": bad})
        assert_problem(r, 422)


def test_events_arrive_live_with_pings_until_the_final_one(submitted):
    """Each step waits for what the client has received, not for time to pass: a ping on the
    open stream, then an event added after that arrives while the stream stays open, then the
    final one ends the stream."""
    api, http, sid = submitted
    api.app.state.sse_poll_s = 0.05
    api.app.state.sse_ping_s = 0.2
    lines: list[str] = []  # appended by the reader thread as they arrive
    failed: list[BaseException] = []

    def read() -> None:
        try:
            with http.stream("GET", f"/v1/searches/{sid}/events", timeout=20) as r:
                for line in r.iter_lines():
                    lines.append(line)
        except BaseException as exc:  # re-raised by the test thread
            failed.append(exc)

    def received(line: str) -> Callable[[], bool]:
        def check() -> bool:
            if failed:
                raise failed[0]
            return line in lines

        return check

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_until(received("event: search.queued"), 15, "the stream to send the queued event")
    wait_until(received(": ping"), 15, "a ping while nothing happens")
    api.set_status(sid, "running")
    api.add_event(sid, "trial.finished", {"number": 0, "state": "COMPLETE"})
    wait_until(received("event: trial.finished"), 15, "trial.finished to arrive live")
    assert reader.is_alive(), "the stream ended before the final event"
    api.set_status(sid, "cancelled")
    reader.join(15)
    assert not reader.is_alive(), "the stream stayed open after the final event"
    if failed:
        raise failed[0]
    kinds = [e.kind for e in parse_sse(iter(lines))]
    assert kinds == ["search.queued", "search.running", "trial.finished", "search.cancelled"]


# ---- operations --------------------------------------------------------------------------
def test_healthz_readyz_and_metrics(submitted):
    api, _http, sid = submitted
    anonymous = api.client()
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    assert anonymous.get("/readyz").json() == {"status": "ready"}
    api.save_trial(sid, 0, "COMPLETE")
    api.save_trial(sid, 1, "FAIL", wall_time_s=1.5)
    api.set_status(sid, "running")
    r = anonymous.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    for line in [
        "hssl_queue_depth 1",
        'hssl_searches{status="running"} 1',
        'hssl_searches{status="queued"} 0',
        "hssl_running_searches 1",
        'hssl_trials_finished_total{state="COMPLETE"} 1',
        'hssl_trials_finished_total{state="FAIL"} 1',
        "hssl_trial_duration_seconds_count 2",
        "hssl_trial_duration_seconds_sum 4.0",
        "# TYPE hssl_trial_duration_seconds summary",
    ]:
        assert line in text.splitlines(), (line, text)
    assert 'hssl_http_requests_total{method="POST",route="/v1/searches",status="202"} 1' in text


def test_readyz_is_503_on_an_unmigrated_database(empty_database_url, tmp_path, clean_env):
    api = Api(empty_database_url, tmp_path)
    with live_server(create_app(api.settings)) as url:
        api.url = url
        body = assert_problem(api.client().get("/readyz"), 503, "unavailable")
        assert "hssl migrate" in body["detail"]
        assert api.client().get("/healthz").status_code == 200
        api.close()


def test_readyz_is_503_when_the_database_does_not_answer(tmp_path, clean_env):
    url = "postgresql+psycopg://nobody@127.0.0.1:1/nothing?connect_timeout=2"
    api = Api(url, tmp_path)
    with live_server(create_app(api.settings)) as base:
        api.url = base
        assert_problem(api.client().get("/readyz"), 503, "unavailable")
        r = api.client("hssl_deadbeef_x").get("/v1/searches")
        assert_problem(r, 503, "unavailable")
        assert r.headers["retry-after"] == "5"
        api.close()


def test_openapi_lists_every_route_with_examples(api):
    doc = api.client().get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    expected = {
        ("post", "/v1/searches"),
        ("get", "/v1/searches"),
        ("get", "/v1/searches/{search_id}"),
        ("post", "/v1/searches/{search_id}/cancel"),
        ("get", "/v1/searches/{search_id}/trials"),
        ("get", "/v1/searches/{search_id}/ranking"),
        ("get", "/v1/searches/{search_id}/recommendation"),
        ("get", "/v1/searches/{search_id}/events"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
    }
    found = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert expected <= found, expected - found

    def has_example(content: dict) -> bool:
        for media in content.values():
            if "example" in media or "examples" in media:
                return True
            ref = media.get("schema", {}).get("$ref", "")
            if ref and "examples" in schemas[ref.rsplit("/", 1)[1]]:
                return True
        return False

    for method, path in expected:
        op = doc["paths"][path][method]
        ok = [c for c in op["responses"] if c.startswith("2")]
        assert ok and all(has_example(op["responses"][c]["content"]) for c in ok), (method, path)
        for code, response in op["responses"].items():
            if code.startswith(("4", "5")):
                assert PROBLEM in response["content"], (method, path, code)
                assert has_example(response["content"])
        if path.startswith("/v1"):
            assert op.get("security") == [{"ApiKey": []}], (method, path)
    body = doc["paths"]["/v1/searches"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/SearchSpec"} and body["example"]
    assert {"SearchSpec", "Budget", "Problem", "SearchResource", "TrialPage"} <= set(schemas)
    assert "HTTPValidationError" not in schemas
    for ref in _refs(doc):
        assert ref.rsplit("/", 1)[1] in schemas, ref


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_search_ids_in_paths_must_be_uuids(submitted):
    _api, http, _sid = submitted
    for path in ["/v1/searches/123", "/v1/searches/x/trials", "/v1/searches/%00/events"]:
        assert_problem(http.get(path), 422)
    assert_problem(http.get(f"/v1/searches/{uuid.uuid4()}/ranking"), 404)
