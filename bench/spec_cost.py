"""Worst-case validation cost of a search spec; one JSON line. Not a test: figures, printed.

Bodies up to the API's size limit (64 KB) built to make validation work hard: the largest grid
still accepted (4,096 candidates), the most explicit heads a body holds, a grid far over the
limit (refused before expansion), absurd sizes in trial_overrides. Time of
``service.http.submission.validate_spec`` (what POST /v1/searches runs before any database work),
best of 5, in milliseconds, and each body's size.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.errors import InvalidSpec
from service.http.submission import validate_spec

LIMIT = 64 * 1024
BASE = {"name": "vit_small_patch16_224", "img_size": 32}
FAMILIES = ["convnext", "resnet", "transformer", "mlp", "pool"]


def bodies() -> dict[str, dict]:
    heads = []
    while len(json.dumps(heads)) < LIMIT - 500:
        i = len(heads)
        heads.append(f"convnext:depth={i % 8 + 1},kernel={2 * (i % 5) + 3},width_ratio={i + 1}e-4")
    return {
        "grid_4096_accepted": {
            "base": BASE,
            "space": {
                "families": FAMILIES,
                "depths": list(range(1, 9)),
                "kernels": [3, 5, 7, 9],
                "first_residual": [True, False],
                "pooling": ["avg", "max"],
                "width_ratios": [0.25, 0.5, 1.0],
            },
        },
        "explicit_heads_64kb": {"base": BASE, "space": {"heads": heads}},
        "grid_2_88M_refused": {
            "base": BASE,
            "space": {
                "families": FAMILIES,
                "depths": list(range(1, 13)),
                "kernels": [1, 3, 5, 7, 9, 11],
                "first_residual": [True, False],
                "pooling": ["avg", "max"],
                "width_ratios": [round(0.25 + i / 1000, 3) for i in range(2000)],
            },
        },
        "absurd_out_dim_refused": {"base": BASE, "trial_overrides": {"out_dim": 10**12}},
    }


def main() -> None:
    figures = {"bench": "spec_cost", "limit_bytes": LIMIT}
    for name, body in bodies().items():
        size = len(json.dumps(body))
        best, outcome = float("inf"), "accepted"
        for _ in range(5):
            started = time.perf_counter()
            try:
                validate_spec(body)
            except InvalidSpec as exc:
                outcome = "422: " + str(exc)[:90]
            best = min(best, time.perf_counter() - started)
        figures[name] = {"bytes": size, "ms": round(best * 1000, 1), "outcome": outcome}
    figures["worst_ms"] = max(v["ms"] for v in figures.values() if isinstance(v, dict))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
