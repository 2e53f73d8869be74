"""The API under test, served by a real uvicorn on a free loopback port (in a thread), and what
the API tests share: tenants with keys, a data root, rows written the way a worker writes them.
Backend-agnostic: give it any migrated ``database_url`` (the conftest's fixture runs both)."""

from __future__ import annotations

import socket
import threading
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from service.http.app import create_app
from service.persistence import store
from service.persistence.db import engine_for, session_scope
from service.persistence.settings import Settings
from tests.waiting import wait_until

PROBLEM = "application/problem+json"
# valid and cheap to validate: one family, one seed → planned = 1
SPEC: dict[str, Any] = {
    "base": {"name": "resnet18", "img_size": 32},
    "data": "synthetic",
    "space": {"families": ["convnext"]},
    "budget": {"epochs": 1},
}


def spec(**changes: Any) -> dict[str, Any]:
    return {**SPEC, **changes}


class Recorder:
    """A dispatcher that remembers what it was told."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[uuid.UUID, str]] = []
        self.fail = fail

    def submitted(self, search_id: uuid.UUID, queue: str) -> None:
        self.calls.append((search_id, queue))
        if self.fail:
            raise RuntimeError("dispatcher down")


@contextmanager
def live_server(app):
    """Serve ``app`` until the block ends; yields its base URL. uvicorn is handed the socket
    this bound (port 0: the kernel's choice), so no other process can take the port first."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)

    def started() -> bool:
        assert thread.is_alive(), "uvicorn stopped before it served"
        return server.started

    try:
        thread.start()
        wait_until(started, 30, "uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


class Api:
    """A running API on ``database_url`` with a data root under ``tmp_path``."""

    def __init__(self, database_url: str, tmp_path: Path, **overrides: Any) -> None:
        self.root = tmp_path / "root"
        (self.root / "images" / "cat").mkdir(parents=True, exist_ok=True)
        self.outside = tmp_path / "outside"
        (self.outside / "dog").mkdir(parents=True, exist_ok=True)
        self.settings = Settings(
            _env_file=None,
            data_dir=tmp_path / "data",
            database_url=database_url,
            data_root=self.root,
            **overrides,
        )
        self.engine = engine_for(self.settings.resolved_database_url)
        self.url = ""
        self.clients: list[httpx.Client] = []

    def tenant(self, name: str, *, max_concurrent: int = 20, max_trials: int = 200) -> str:
        """A new tenant's first API key."""
        with session_scope(self.engine) as s:
            tenant = store.create_tenant(
                s, name, max_concurrent=max_concurrent, max_trials=max_trials
            )
            key, _ = store.create_api_key(s, tenant)
        return key

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=20)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()

    # ---- rows as the worker writes them --------------------------------------------------
    def search_row(self, search_id: str):
        with session_scope(self.engine) as s:
            return store.get_search(s, None, uuid.UUID(search_id))

    def set_status(self, search_id: str, status: str, error: str | None = None) -> None:
        with session_scope(self.engine) as s:
            store.set_status(s, store.get_search(s, None, uuid.UUID(search_id)), status, error)

    def add_event(self, search_id: str, kind: str, data: dict[str, Any]) -> None:
        with session_scope(self.engine) as s:
            store.add_event(s, uuid.UUID(search_id), kind, data)

    def save_trial(self, search_id: str, number: int, state: str = "COMPLETE", **attrs) -> None:
        trial = {
            "number": number,
            "label": f"convnext-d{number}",
            "seed": 0,
            "state": state,
            "values": [0.5 + number, 0.1] if state == "COMPLETE" else None,
            "attrs": {"wall_time_s": 2.5, **attrs},
        }
        with session_scope(self.engine) as s:
            store.save_trial(s, store.get_search(s, None, uuid.UUID(search_id)), trial)

    def finish(self, search_id: str, ranking: dict, recommendation: dict | None) -> None:
        with session_scope(self.engine) as s:
            search = store.get_search(s, None, uuid.UUID(search_id))
            store.set_status(s, search, "running")
            store.save_results(s, search, ranking, recommendation)
            store.set_status(s, search, "completed")


RANKING = {
    "objectives": ["d_kl", "d_cka"],
    "rule": "test",
    "heads": [
        {"rank": 1, "label": "convnext-d2-k5", "n": 1, "head": {"family": "convnext"}},
        {"rank": 0, "label": "mlp-d2", "n": 0, "head": {"family": "mlp"}},
    ],
    "baseline": None,
    "pareto": ["convnext-d2-k5"],
    "correlations": {},
}
RECOMMENDATION = {
    "schema": "hssl-search/recommendation/v1",
    "head": {"family": "convnext", "depth": 2, "kernel": 5},
    "head_label": "convnext-d2-k5",
    "base": {"name": "resnet18", "img_size": 32},
    "note": "unicode ✓ and a\nnewline",
}


@contextmanager
def api_stack(database_url: str, tmp_path: Path):
    """Yields start(dispatcher=None, **settings) → a running Api; all stop when the block ends."""
    with ExitStack() as stack:

        def start(dispatcher=None, **overrides) -> Api:
            api = Api(database_url, tmp_path, **overrides)
            api.app = create_app(api.settings, dispatcher=dispatcher)
            api.url = stack.enter_context(live_server(api.app))
            stack.callback(api.close)
            return api

        yield start


def assert_problem(response, status: int, slug: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://hssl-search.dev/problems/")
    assert body["title"] and body["detail"] and body["instance"] == response.request.url.path
    if slug:
        assert body["type"].endswith("/" + slug), body
    return body
