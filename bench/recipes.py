"""Proxy-recipe variants at the study's CPU scale: which settings keep short runs from collapsing?

Each variant is a set of TrialConfig overrides on one scale (``recipes.yaml``); every variant runs
on the same paired seeds, one ``run_trial`` per (variant, seed), in-process on one thread. Runs
append one JSON line each to ``<out>/runs.jsonl`` and are skipped when already there, so the
bench resumes after any interruption; ``--shard i/n`` lets n processes share the work (one per
core). ``--report`` writes ``<out>/recipes.md``: per variant the honest floor (random init with
BN statistics recalibrated; raw pixels beside it), the gain of each probe over its own seed's
floor (mean ± sd), the collapse status and target entropy at the end, and the wall time.

    python bench/recipes.py --shard 0/2 & python bench/recipes.py --shard 1/2 &
    python bench/recipes.py --report
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.jsonable import plain_json  # noqa: E402
from training.loop.train import run_trial  # noqa: E402
from training.recipe import TrialConfig  # noqa: E402

PROBES = ("knn_cls", "knn_patch", "linear")
TARGET_GAIN = 0.05  # the bar: >= 5 pp above the seed's floor, >= 2 seed SDs


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def config_of(plan: dict[str, Any], variant: dict[str, Any], seed: int) -> TrialConfig:
    values = {**plan["common"], **variant.get("overrides", {}), "seed": seed}
    return TrialConfig.from_dict(values)


def done_keys(path: Path) -> set[tuple[str, int]]:
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["variant"], r["seed"]) for r in rows}


def run(plan: dict[str, Any], out: Path, shard: tuple[int, int], only: set[str]) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "runs.jsonl"
    jobs = [
        (v["name"], seed)
        for v in plan["variants"]
        if not only or v["name"] in only
        for seed in v.get("seeds", plan["seeds"])
    ]
    mine = [job for i, job in enumerate(jobs) if i % shard[1] == shard[0]]
    variants = {v["name"]: v for v in plan["variants"]}
    for name, seed in mine:
        if (name, seed) in done_keys(results):
            continue
        config = config_of(plan, variants[name], seed)
        started = time.time()
        result = run_trial(config, output_dir=ROOT / ".bench-runs" / out.name / f"{name}-s{seed}")
        row = {
            "variant": name,
            "seed": seed,
            "overrides": variants[name].get("overrides", {}),
            "status": result.status,
            "reason": result.reason,
            "init": result.init_metrics,
            "final": result.metrics,
            "history": list(result.history),
            "wall_time_s": result.wall_time_s,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)),
        }
        with results.open("a") as fh:
            fh.write(json.dumps(plain_json(row)) + "\n")
        print(
            json.dumps(
                {
                    "variant": name,
                    "seed": seed,
                    "status": result.status,
                    **{m: result.metrics.get(m) for m in PROBES},
                    "collapse": result.metrics.get("collapse"),
                }
            ),
            flush=True,
        )


def _pm(values: list[float], signed: bool = False) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    sign = "+" if signed else ""
    return f"{mean:{sign}.3f} ± {sd:.3f}" if math.isfinite(sd) else f"{mean:{sign}.3f}"


def meets_target(gains: list[float]) -> bool:
    """The issue's bar for one probe: >= 3 seeds, each >= +0.05, mean >= 2 seed SDs."""
    if len(gains) < 3:
        return False
    return min(gains) >= TARGET_GAIN and statistics.fmean(gains) >= 2 * statistics.stdev(gains)


def variant_row(name: str, note: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == "completed"]
    gains = {m: [r["final"][m] - r["init"][m] for r in ok if m in r["final"]] for m in PROBES}
    meeting = [m for m in PROBES if meets_target(gains[m])]
    statuses = [r["final"].get("collapse", "?") for r in ok]
    return {
        "name": name,
        "note": note,
        "n": len(ok),
        "failed": len(rows) - len(ok),
        "floor": {m: [r["init"][m] for r in ok if m in r["init"]] for m in PROBES},
        "final": {m: [r["final"][m] for r in ok if m in r["final"]] for m in PROBES},
        "gain": gains,
        "pixels": [r["init"].get("pixels_knn") for r in ok if "pixels_knn" in r["init"]],
        "entropy": [r["final"].get("target_entropy") for r in ok],
        "ln_k": next((r["final"].get("ln_k") for r in ok), None),
        "collapse": statuses,
        "information": [r["final"].get("target_information") for r in ok],
        "meets_target": meeting,
        "wall": [r["wall_time_s"] for r in ok],
    }


def report(plan: dict[str, Any], out: Path) -> str:
    rows = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines() if x.strip()]
    table = []
    for v in plan["variants"]:
        mine = [r for r in rows if r["variant"] == v["name"]]
        if mine:
            table.append(variant_row(v["name"], v.get("note", ""), mine))
    lines = [
        "# Proxy-recipe variants (bench/recipes.py)",
        "",
        f"Scale: {json.dumps(plan['common'])}. Gains are final − initial on the same run "
        "(initial = the random-init network with BN statistics recalibrated), mean ± sd over "
        "paired seeds; target (issue 11): ≥ +0.05 on every one of ≥ 3 seeds and a mean ≥ 2 SD, "
        "on a probe ('target met on' names the probes). Collapse is the "
        "status of the global target at the end (`training/evaluation/collapse.py`).",
        "",
        "| variant | n | k-NN [CLS] floor → final | gain k-NN [CLS] | gain k-NN patch | "
        "gain linear | raw pixels k-NN | target information (nats) | target entropy / ln K | "
        "collapse | target met on | wall s (contended) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        ent = [e for e in t["entropy"] if e is not None]
        ln_k = t["ln_k"] or float("nan")
        lines.append(
            "| "
            + " | ".join(
                [
                    f"`{t['name']}`" + (f" — {t['note']}" if t["note"] else ""),
                    f"{t['n']}" + (f" (+{t['failed']} failed)" if t["failed"] else ""),
                    f"{_pm(t['floor']['knn_cls'])} → {_pm(t['final']['knn_cls'])}",
                    _pm(t["gain"]["knn_cls"], True),
                    _pm(t["gain"]["knn_patch"], True),
                    _pm(t["gain"]["linear"], True),
                    _pm([p for p in t["pixels"] if p is not None]),
                    _pm([i for i in t["information"] if i is not None]),
                    f"{statistics.fmean(ent):.2f} / {ln_k:.2f}" if ent else "–",
                    ", ".join(t["collapse"]),
                    ", ".join(t["meets_target"]) or "–",
                    f"{statistics.fmean(t['wall']):.0f}" if t["wall"] else "–",
                ]
            )
            + " |"
        )
    text = "\n".join(lines) + "\n"
    (out / "recipes.md").write_text(text)
    (out / "recipes.json").write_text(json.dumps(plain_json(table), indent=1))
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, default=Path(__file__).with_name("recipes.yaml"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "study" / "recipes")
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th job from the i-th")
    parser.add_argument("--only", action="append", default=[], help="variant name (repeatable)")
    parser.add_argument("--report", action="store_true", help="write recipes.md, train nothing")
    args = parser.parse_args(argv)
    plan = load(args.plan)
    if args.report:
        print(report(plan, args.out))
        return
    index, count = (int(x) for x in args.shard.split("/"))
    run(plan, args.out, (index, count), set(args.only))


if __name__ == "__main__":
    main()
