"""Loopback helpers for tests that talk to real server processes."""

from __future__ import annotations

import json
import socket
import urllib.request
from typing import Any


class ReservedPort:
    """A loopback port held for a server that binds it itself (another process: ``hssl serve``,
    PostgreSQL, optuna-dashboard, a container on the host network); a server in this process
    gets a bound socket instead (``api_helpers.live_server``).

    A socket bound to the port with SO_REUSEADDR, never listening, holds it: the kernel gives
    the port to no other bind, nor to an outgoing connection, while it is held, yet a server
    that sets SO_REUSEADDR before binding (uvicorn, PostgreSQL and wsgiref all do) binds and
    listens on it (Linux). So no other test can take the port between its choice and the
    server's bind, nor while the server restarts, as one could with a port bound, closed and
    handed on. While nothing listens, a connection to it is refused.

    ``with ReservedPort() as port: ...`` holds it for the block; else ``.port`` and
    ``release()``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.port: int = self._sock.getsockname()[1]

    def release(self) -> None:
        self._sock.close()

    def __enter__(self) -> int:
        return self.port

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def http(method: str, url: str, key: str | None = None, body: Any = None):
    """One JSON request; returns (status, headers, raw body)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.headers, response.read()
