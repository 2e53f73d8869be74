"""The HTTP API through real HTTP (uvicorn on a loopback port), on SQLite and PostgreSQL:
submission, idempotency, quotas, listing, cancel, auth, rate limit, tenant isolation, and
problem+json for every kind of bad input (never a 500)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import pytest

from search.spec import CandidateSpace
from service.persistence import store
from service.persistence.db import session_scope
from tests.api_helpers import PROBLEM, Recorder, assert_problem, spec


# ---- submission ------------------------------------------------------------------------
def test_submit_returns_202_location_and_resource(start):
    recorder = Recorder()
    api = start(dispatcher=recorder)
    http = api.client(api.tenant("acme"))
    r = http.post("/v1/searches", json=spec(name="my-search"))
    assert r.status_code == 202, r.text
    body = r.json()
    sid = body["id"]
    assert r.headers["location"] == f"/v1/searches/{sid}"
    assert body["name"] == "my-search" and body["status"] == "queued"
    assert body["progress"] == {
        "planned": 1,
        "running": 0,
        "finished": 0,
        "failed": 0,
        "stage": None,  # a staged search's stage; one stage otherwise
    }
    assert body["best"] is None and body["error"] is None and body["started_at"] is None
    assert body["created_at"].endswith(("Z", "+00:00"))
    assert body["links"] == {
        "self": f"/v1/searches/{sid}",
        "trials": f"/v1/searches/{sid}/trials",
        "ranking": f"/v1/searches/{sid}/ranking",
        "recommendation": f"/v1/searches/{sid}/recommendation",
        "events": f"/v1/searches/{sid}/events",
        "cancel": f"/v1/searches/{sid}/cancel",
    }
    assert http.get(body["links"]["self"]).json() == body
    assert recorder.calls == [(uuid.UUID(sid), "default")]
    row = api.search_row(sid)
    assert row.study_name == f"my-search-{uuid.UUID(sid).hex[:12]}"  # as the dashboard lists it
    assert row.spec["name"] == "my-search" and row.spec["data"] == "synthetic"


def test_unnamed_search_is_named_after_its_study_and_folder_data_is_resolved(api):
    http = api.client(api.tenant("acme"))
    r = http.post("/v1/searches", json=spec(name=None, data="images"))
    assert r.status_code == 202, r.text
    sid = r.json()["id"]
    study = api.search_row(sid).study_name
    assert r.json()["name"] == study and study.endswith(f"-{uuid.UUID(sid).hex[:12]}")
    assert study.startswith("resnet18-joint-"), study  # its base and strategy
    assert api.search_row(sid).spec["data"] == str((api.root / "images").resolve())
    inside = http.post("/v1/searches", json=spec(data=str(api.root / "images" / ".." / "images")))
    assert inside.status_code == 202, inside.text


def test_a_failing_dispatcher_does_not_fail_the_submission(start):
    api = start(dispatcher=Recorder(fail=True))
    r = api.client(api.tenant("acme")).post("/v1/searches", json=spec())
    assert r.status_code == 202 and r.json()["status"] == "queued"


def test_idempotency_same_key_same_search_other_body_conflict(start):
    recorder = Recorder()
    api = start(dispatcher=recorder)
    http = api.client(api.tenant("acme"))
    headers = {"Idempotency-Key": "job-1"}
    first = http.post("/v1/searches", json=spec(), headers=headers)
    again = http.post("/v1/searches", json=spec(), headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert len(recorder.calls) == 1
    other = http.post("/v1/searches", json=spec(seed=1), headers=headers)
    assert "Idempotency-Key" in assert_problem(other, 409, "conflict")["detail"]
    # another tenant may use the same key for its own search
    theirs = api.client(api.tenant("other")).post("/v1/searches", json=spec(), headers=headers)
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
    for bad in ["é".encode(), "x" * 201]:
        r = http.post("/v1/searches", json=spec(), headers={"Idempotency-Key": bad})
        assert_problem(r, 422)


def test_quotas_concurrent_searches_and_planned_runs(api):
    http = api.client(api.tenant("small", max_concurrent=1, max_trials=3))
    assert http.post("/v1/searches", json=spec()).status_code == 202
    body = assert_problem(http.post("/v1/searches", json=spec()), 429, "quota-exceeded")
    assert "quota" in body["detail"]
    roomy = api.client(api.tenant("few-trials", max_trials=3))
    big = spec(space={"families": ["convnext", "resnet", "mlp", "pool"]})  # 4 planned trials
    assert "4 runs" in assert_problem(roomy.post("/v1/searches", json=big), 429)["detail"]
    assert roomy.post("/v1/searches", json=spec()).status_code == 202


# ---- listing, reading, cancelling --------------------------------------------------------
def test_list_pagination_and_status_filter(api):
    http = api.client(api.tenant("acme"))
    ids = [http.post("/v1/searches", json=spec(seed=i)).json()["id"] for i in range(5)]
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = http.get("/v1/searches", params=params)
        assert page.status_code == 200, page.text
        seen += [item["id"] for item in page.json()["items"]]
        pages += 1
        cursor = page.json()["next_cursor"]
        if not cursor:
            break
    assert pages == 3 and seen == ids[::-1]
    for sid in ids[:2]:
        assert http.post(f"/v1/searches/{sid}/cancel").json()["status"] == "cancelled"
    cancelled = http.get("/v1/searches", params={"status": "cancelled"}).json()
    assert {i["id"] for i in cancelled["items"]} == set(ids[:2])
    assert cancelled["next_cursor"] is None
    queued = http.get("/v1/searches", params={"status": "queued", "limit": 100}).json()
    assert [i["id"] for i in queued["items"]] == ids[:1:-1]
    assert_problem(http.get("/v1/searches", params={"status": "bogus"}), 422)
    assert_problem(http.get("/v1/searches", params={"limit": 0}), 422)
    assert_problem(http.get("/v1/searches", params={"limit": 101}), 422)
    assert_problem(http.get("/v1/searches", params={"cursor": "not-a-cursor"}), 400)


def test_cancel_queued_is_cancelled_running_is_cancelling(api):
    http = api.client(api.tenant("acme"))
    queued = http.post("/v1/searches", json=spec()).json()["id"]
    r = http.post(f"/v1/searches/{queued}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    running = http.post("/v1/searches", json=spec(seed=3)).json()["id"]
    api.set_status(running, "running")
    assert http.post(f"/v1/searches/{running}/cancel").json()["status"] == "cancelling"
    assert http.get(f"/v1/searches/{running}").json()["status"] == "cancelling"
    # cancelling a final search changes nothing
    assert http.post(f"/v1/searches/{queued}/cancel").json()["status"] == "cancelled"


def test_tenant_isolation_on_every_route(api):
    mine = api.client(api.tenant("acme"))
    theirs = api.client(api.tenant("rival"))
    sid = mine.post("/v1/searches", json=spec()).json()["id"]
    for method, path in [
        ("GET", f"/v1/searches/{sid}"),
        ("POST", f"/v1/searches/{sid}/cancel"),
        ("GET", f"/v1/searches/{sid}/trials"),
        ("GET", f"/v1/searches/{sid}/ranking"),
        ("GET", f"/v1/searches/{sid}/recommendation"),
        ("GET", f"/v1/searches/{sid}/events"),
        ("GET", f"/v1/searches/{uuid.uuid4()}"),
    ]:
        assert_problem(theirs.request(method, path), 404, "not-found")
    assert theirs.get("/v1/searches").json() == {"items": [], "next_cursor": None}
    assert mine.get(f"/v1/searches/{sid}").json()["status"] == "queued"  # not cancelled by them
    assert_problem(mine.get("/v1/searches/not-a-uuid"), 422)


# ---- auth and rate limit -----------------------------------------------------------------
def test_missing_bad_and_revoked_keys_are_401(api):
    key = api.tenant("acme")
    routes = [
        ("GET", "/v1/searches"),
        ("POST", "/v1/searches"),
        ("GET", f"/v1/searches/{uuid.uuid4()}"),
    ]
    anonymous = api.client()
    for method, path in routes:
        r = anonymous.request(method, path, json=spec() if method == "POST" else None)
        assert_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
    for header in [
        "Bearer hssl_deadbeef_nope",
        "Bearer nonsense",
        f"Basic {key}",
        "Bearer",
        f"Bearer {key}x",
    ]:
        r = anonymous.get("/v1/searches", headers={"Authorization": header})
        assert_problem(r, 401)
    assert api.client(key).get("/v1/searches").status_code == 200
    with session_scope(api.engine) as s:
        assert store.revoke_api_key(s, key.split("_")[1]) == 1
    assert_problem(api.client(key).get("/v1/searches"), 401)


def test_rate_limit_is_429_with_retry_after(start):
    api = start(rate_limit_per_minute=3)
    http = api.client(api.tenant("acme"))
    assert [http.get("/v1/searches").status_code for _ in range(3)] == [200, 200, 200]
    r = http.get("/v1/searches")
    body = assert_problem(r, 429, "rate-limited")
    assert int(r.headers["retry-after"]) >= 1 and body["retry_after"] >= 1
    # another key has its own budget; health checks have none
    assert api.client(api.tenant("other")).get("/v1/searches").status_code == 200
    assert all(api.client().get("/healthz").status_code == 200 for _ in range(5))


# ---- bad input is a problem, never a 500 -------------------------------------------------
def test_unknown_timm_name_lists_close_matches(api):
    r = api.client(api.tenant("acme")).post("/v1/searches", json=spec(base={"name": "resnet19"}))
    body = assert_problem(r, 422, "invalid-spec")
    assert body["errors"][0]["field"] == "base.name"
    assert "resnet18" in body["errors"][0]["message"] and "resnet18" in body["detail"]


@pytest.mark.parametrize(
    "space",
    [
        {"heads": ["convnext:depth=x"]},
        {"heads": [{"family": "convnext", "depth": "x"}]},  # a TypeError inside the spec
        {"heads": [{"family": "nope"}]},
        {"heads": []},
        {"families": []},
        {"families": ["convnext"], "bogus": 1},
    ],
)
def test_invalid_head_specs_are_422(api, space):
    r = api.client(api.tenant("acme")).post("/v1/searches", json=spec(space=space))
    body = assert_problem(r, 422, "invalid-spec")
    assert body["errors"] and all({"field", "message"} <= set(e) for e in body["errors"])


@pytest.mark.parametrize(
    ("budget", "field"),
    [
        ({"epochs": -1}, "budget.epochs"),
        ({"epochs": 10**30}, "budget.epochs"),
        ({"trials": 0}, "budget.trials"),
        ({"seeds": 1000}, "budget.seeds"),
        ({"wall_clock_s": -5}, "budget.wall_clock_s"),
        ({"epochs": "many"}, "budget.epochs"),
    ],
)
def test_bad_budgets_are_422_naming_the_field(api, budget, field):
    r = api.client(api.tenant("acme")).post("/v1/searches", json=spec(budget=budget))
    assert field in [e["field"] for e in assert_problem(r, 422)["errors"]]


@pytest.mark.parametrize(
    "name", ["名前-検索", "a" * 81, "ok-" + "x" * 10_000, "bad name", "../etc", "\x00"]
)
def test_unicode_and_long_names_are_refused_cleanly(api, name):
    r = api.client(api.tenant("acme")).post("/v1/searches", json=spec(name=name))
    assert r.status_code in (413, 422), r.text
    assert_problem(r, r.status_code)


def test_data_outside_the_root_or_missing_is_422(api):
    http = api.client(api.tenant("acme"))
    (api.root / "escape").symlink_to(api.outside, target_is_directory=True)
    (api.root / "file.txt").write_text("not a folder")
    for data in [
        "../outside",
        "images/../../outside",
        str(api.outside),
        "/etc",
        "escape",
        "escape/dog",
        "missing-folder",
        "file.txt",
        "données/ü",
        "bad\x00path",
        "~",
    ]:
        r = http.post("/v1/searches", json=spec(data=data))
        body = assert_problem(r, 422, "invalid-spec")
        assert body["errors"][0]["field"] == "data", data
        assert "data_root" not in body and repr(data) in body["detail"]  # the client's terms
        assert str(api.root.resolve()) not in r.text and str(api.outside) not in r.text.replace(
            repr(str(api.outside)), ""
        )  # no server path it did not send


def test_body_size_content_type_and_json_errors(api):
    http = api.client(api.tenant("acme"))
    limit = api.settings.max_body_bytes
    huge = json.dumps(spec(trial_overrides={"pad": "x" * limit}))
    assert_problem(
        http.post("/v1/searches", content=huge, headers={"content-type": "application/json"}),
        413,
        "payload-too-large",
    )

    def chunks():  # no Content-Length: chunked transfer, counted as it arrives
        for _ in range(8):
            yield b" " * (limit // 4)

    r = http.post("/v1/searches", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(r, 413)
    r = http.post(
        "/v1/searches", content=b'{"data": ', headers={"content-type": "application/json"}
    )
    assert_problem(r, 400, "malformed-json")
    r = http.post(
        "/v1/searches", content=b'{"seed": NaN}', headers={"content-type": "application/json"}
    )
    assert_problem(r, 400, "malformed-json")
    r = http.post(
        "/v1/searches", content=b"\xff\xfe{}", headers={"content-type": "application/json"}
    )
    assert_problem(r, 400)
    r = http.post("/v1/searches", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert_problem(r, 422, "invalid-spec")
    r = http.post("/v1/searches", content=b"", headers={"content-type": "application/json"})
    assert_problem(r, 422, "invalid-spec")
    for content_type in ["text/plain", "application/x-www-form-urlencoded", None]:
        headers = {"content-type": content_type} if content_type else {}
        r = http.post("/v1/searches", content=json.dumps(spec()), headers=headers)
        assert_problem(r, 415, "unsupported-media-type")
    r = http.post(
        "/v1/searches",
        content=json.dumps(spec()),
        headers={"content-type": "application/merge-patch+json; charset=utf-8"},
    )
    assert r.status_code == 202, r.text
    deep = "[" * 10_000 + "]" * 10_000
    r = http.post("/v1/searches", content=deep, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and r.headers["content-type"].startswith(PROBLEM)


def test_unknown_routes_methods_and_unexpected_errors_are_problems(api):
    anonymous = api.client()
    assert_problem(anonymous.get("/nope"), 404, "not-found")
    r = anonymous.delete("/healthz")
    assert_problem(r, 405, "method-not-allowed")
    assert "GET" in r.headers["allow"]

    @api.app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    r = anonymous.get("/boom")
    body = assert_problem(r, 500, "internal")
    assert "secret" not in r.text and "logged" in body["detail"]


def test_importing_the_app_touches_no_database_and_not_the_training_loop(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSSL_")}
    env["HSSL_DATA_DIR"] = str(tmp_path / "never")
    code = (
        "import sys, service.api;"
        "bad = [m for m in ('training.loop.train',) if m in sys.modules];"
        "print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "never").exists()


def test_concurrent_submissions_all_answer_and_one_key_makes_one_search(start):
    recorder = Recorder()
    api = start(dispatcher=recorder)
    key = api.tenant("acme")
    results: dict[str | None, list] = {"same": [], None: []}

    def submit(idempotency_key: str | None):
        headers = {"Authorization": f"Bearer {key}"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        with httpx.Client(base_url=api.url, timeout=30) as http:
            r = http.post("/v1/searches", json=spec(), headers=headers)
            results[idempotency_key].append(r)

    threads = [threading.Thread(target=submit, args=(k,)) for k in ["same", None] * 5]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = results["same"] + results[None]
    assert [r.status_code for r in every] == [202] * 10, [r.text for r in every]
    assert len({r.json()["id"] for r in results["same"]}) == 1
    assert len({r.json()["id"] for r in results[None]}) == 5
    assert len(recorder.calls) == 6


def test_a_huge_grid_or_absurd_sizes_are_refused_before_anything_is_expanded(api, monkeypatch):
    """A 14 KB body naming 2.88 M candidates (5 x 12 x 6 x 2 x 2 x 2,000; filed as "1.44 M")
    once took minutes and a gigabyte; it must be a 422 that names the product, without
    expanding the grid (counted: ``CandidateSpace.candidates`` is never called for it). Sizes
    far beyond sense in trial_overrides are refused the same way."""
    expanded: list[int] = []
    candidates = CandidateSpace.candidates

    def counted(space: CandidateSpace):
        expanded.append(space.grid_size())
        return candidates(space)

    monkeypatch.setattr(CandidateSpace, "candidates", counted)
    http = api.client(api.tenant("acme"))
    space = {
        "families": ["convnext", "resnet", "transformer", "mlp", "pool"],
        "depths": list(range(1, 13)),
        "kernels": [1, 3, 5, 7, 9, 11],
        "first_residual": [True, False],
        "pooling": ["avg", "max"],
        "width_ratios": [round(0.25 + i / 1000, 3) for i in range(2000)],
    }
    problem = assert_problem(http.post("/v1/searches", json=spec(space=space)), 422, "invalid-spec")
    assert (
        "2,880,000 candidates" in problem["detail"]
        and "5 x 12 x 6 x 2 x 2 x 2000" in (problem["detail"])
    )
    assert expanded == []  # refused from the lists' lengths alone
    assert http.post("/v1/searches", json=spec()).status_code == 202
    assert expanded and max(expanded) == 1  # a small space is expanded, and counted
    for override in ({"out_dim": 10**9}, {"proj_hidden": 10**7}, {"knn_k": 10**8}):
        r = http.post("/v1/searches", json=spec(trial_overrides=override))
        detail = assert_problem(r, 422, "invalid-spec")["detail"]
        assert next(iter(override)) in detail and "must be in [" in detail


def test_the_openapi_documents_the_problem_each_route_answers(start):
    """One table of problems: what /openapi.json shows for a 422 is what the route sends."""
    api = start()
    doc = api.client().get("/openapi.json").json()
    client = api.client(api.tenant("docs"))

    def documented(method: str, path: str) -> dict:
        example = doc["paths"][path][method]["responses"]["422"]["content"][PROBLEM]["example"]
        return example

    bad_spec = client.post("/v1/searches", json={"base": {"name": "resnet19"}})
    sent = assert_problem(bad_spec, 422)
    shown = documented("post", "/v1/searches")
    assert (shown["type"], shown["title"]) == (sent["type"], sent["title"])
    bad_query = client.get("/v1/searches", params={"limit": 0})
    sent = assert_problem(bad_query, 422)
    shown = documented("get", "/v1/searches")
    assert (shown["type"], shown["title"]) == (sent["type"], sent["title"])
    assert sent["type"] != assert_problem(bad_spec, 422)["type"]  # two problems, told apart


def test_an_api_problem_is_a_service_error_not_the_engines():
    from service.errors import DOCUMENTED, InvalidInput, Problem
    from training.errors import HSSLError

    assert not issubclass(Problem, HSSLError)
    slugs = [cls.slug for cls in DOCUMENTED.values()] + [InvalidInput.slug]
    assert len(slugs) == len(set(slugs))  # each slug names one problem
