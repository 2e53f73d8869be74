"""``/metrics`` in the Prometheus text format (0.0.4), written by hand.

Gauges come from the database at scrape time (any replica answers the same); the HTTP request
counter is this process's own.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from sqlalchemy import Engine

from service.persistence import jobs, store
from service.persistence.db import session_scope
from service.statuses import SearchStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATUSES = tuple(s.value for s in SearchStatus)
TRIAL_STATES = ("COMPLETE", "PRUNED", "FAIL")


class RequestCounter:
    """Requests answered, by method, route template and status (unknown paths share one)."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str, int]] = Counter()
        self._lock = threading.Lock()

    def add(self, scope: dict[str, Any], status: int) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        with self._lock:
            self._counts[(scope.get("method", "?"), template, status)] += 1

    def snapshot(self) -> dict[tuple[str, str, int], int]:
        with self._lock:
            return dict(self._counts)


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def render(engine: Engine, counter: RequestCounter) -> str:
    with session_scope(engine) as s:
        snap = store.metrics_snapshot(s)
        depth = jobs.queue_depth(s)
    searches = {status: 0 for status in STATUSES} | snap["searches"]
    trials = {state: 0 for state in TRIAL_STATES} | snap["trials"]
    lines = [
        "# HELP hssl_queue_depth Jobs of active searches waiting for a worker.",
        "# TYPE hssl_queue_depth gauge",
        f"hssl_queue_depth {depth}",
        "# HELP hssl_searches Searches by status.",
        "# TYPE hssl_searches gauge",
        *(f'hssl_searches{{status="{_label(k)}"}} {v}' for k, v in sorted(searches.items())),
        "# HELP hssl_running_searches Searches running now (including those cancelling).",
        "# TYPE hssl_running_searches gauge",
        f"hssl_running_searches {searches['running'] + searches['cancelling']}",
        "# HELP hssl_trials_finished_total Trials finished, by final state.",
        "# TYPE hssl_trials_finished_total counter",
        *(
            f'hssl_trials_finished_total{{state="{_label(k)}"}} {v}'
            for k, v in sorted(trials.items())
        ),
        "# HELP hssl_trial_duration_seconds Wall time of the finished trials.",
        "# TYPE hssl_trial_duration_seconds summary",
        f"hssl_trial_duration_seconds_count {snap['trial_seconds_count']}",
        f"hssl_trial_duration_seconds_sum {_num(snap['trial_seconds_sum'])}",
        "# HELP hssl_http_requests_total HTTP requests this process answered.",
        "# TYPE hssl_http_requests_total counter",
    ]
    for (method, route, status), n in sorted(counter.snapshot().items()):
        lines.append(
            f'hssl_http_requests_total{{method="{_label(method)}",route="{_label(route)}",'
            f'status="{status}"}} {n}'
        )
    return "\n".join(lines) + "\n"
