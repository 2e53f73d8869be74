"""The HSSL head study: does the base/head discrepancy track what the base learns?

On one base at proxy scale, the no-head iBOT baseline and every head of ``bench/study.yaml``
train as their own proxy runs on paired seeds (an ``independent`` search: the ground truth),
and the paper's ``joint`` search runs over the same heads. Every run records D_loss, H(target),
D_kl, D_cka and k-NN on [CLS] and on the averaged patch tokens after every epoch, a final linear
probe and its wall time; two reference rows come beside them: the random-init network (the
floor) and raw pixels (k-NN and linear probe on the flattened, normalised pixels of the same
split). Writes ``docs/study/<scale>-<device>/``: ``study.md``, ``results.json``,
``discrepancy_vs_accuracy.png`` and ``accuracy_per_head.png``. Every sentence of the summary is
generated from the numbers.

    python bench/study.py                # --scale cpu: the YAML's values (hours on 2 cores)
    python bench/study.py --scale gpu    # one GPU, minutes
    python bench/study.py --scale tiny   # synthetic data, seconds (what the test runs)

Run it again with the same scale to resume: finished runs are reused, a run that was cut off
continues from its checkpoint (the studies and run folders live under ``--work``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from optuna.trial import TrialState
from study_analysis import (  # bench/ is on the path: this file runs as a script
    JOINT_METRICS,
    STATUSES,
    above_floor,
    collapse_table,
    fidelity,
    paired_gains,
    pixel_reference,
    simulate_stop,
)

from search.jsonable import plain_json
from search.plot import plot_search
from search.ranking import HeadSummary, correlations, rank, summarize
from search.records import records
from search.run import SearchOutcome, report_of, run_search
from search.spec import SearchSpec
from search.stats import bootstrap_ci, mean_sd, spearman
from search.storage import close_study, make_storage, sqlite_url, study_name
from training.data import open_dataset
from training.evaluation.floor import pixel_probes

ROOT = Path(__file__).resolve().parents[1]
CONFIG = Path(__file__).with_name("study.yaml")
SCALES = ("cpu", "proxy", "gpu", "tiny")
PROBES = ("knn_cls", "knn_patch", "linear")
DISCREPANCIES = ("d_kl", "d_cka", "d_loss", "h_target")
NAMES = {
    "knn_cls": "k-NN [CLS]",
    "knn_patch": "k-NN patch",
    "linear": "linear",
    "d_kl": "D_kl",
    "d_cka": "D_cka",
    "d_loss": "D_loss",
    "h_target": "H(target)",
}
CURVE_COLUMNS = 11  # at most this many epochs in the learning-curve tables (first and last kept)
NAN = float("nan")
Stat = tuple[float, float]  # (mean, sample sd) over seeds


# ---------------------------------------------------------------------------- plan and specs


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if nested else value
    return out


def load_plan(path: Path, scale: str) -> dict[str, Any]:
    """The YAML's top level with the preset ``scales[scale]`` merged over it."""
    raw = yaml.safe_load(Path(path).read_text())
    presets = raw.pop("scales", None) or {}
    if scale != "cpu" and scale not in presets:
        raise SystemExit(f"{path} has no preset for --scale {scale}; it has {sorted(presets)}")
    return {**_merge(raw, presets.get(scale) or {}), "scale": scale}


def study_specs(plan: dict[str, Any]) -> dict[str, SearchSpec]:
    """The ground truth (independent, with the baseline) and the joint search, same heads."""
    common = {
        "base": plan["base"],
        "data": plan["data"],
        "space": {"heads": plan["heads"]},
        "seed": plan.get("seed", 0),
        "budget": {**plan["budget"], "seeds": plan["seeds"]},
        "trial_overrides": plan.get("trial_overrides", {}),
        "recipe": plan.get("recipe", "proxy"),
    }
    name = f"study-{plan['scale']}"
    independent = {
        "name": f"{name}-independent",
        "strategy": "independent",
        "objectives": ["knn", "d_kl"],
        "include_baseline": True,
    }
    joint = {"name": f"{name}-joint", "strategy": "joint", "objectives": ["d_kl", "d_cka"]}
    return {
        "independent": SearchSpec.model_validate({**common, **independent}),
        "joint": SearchSpec.model_validate({**common, **joint}),
    }


def stored_outcome(spec: SearchSpec, work_dir: Path) -> SearchOutcome:
    """A search's outcome from its study as it stands (nothing trained)."""
    url = sqlite_url(work_dir)
    study = optuna.load_study(study_name=study_name(spec), storage=make_storage(url))
    try:
        report = report_of(study, spec)
        status = study.user_attrs.get("status", "partial")
    finally:
        close_study(study)
    return SearchOutcome(study.study_name, url, status, report["table"], report["ranking"], {}, [])


def device_label() -> str:
    if torch.cuda.is_available():
        name = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
        return name or "cuda"
    return "cpu"


# ---------------------------------------------------------------------------- measurements


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def completed_runs(study: optuna.Study, strategy: str = "independent") -> list[dict[str, Any]]:
    """Every completed run of one strategy as plain dicts (independent: baseline first; joint:
    one per head and seed, the heads of one seed sharing their run's probes)."""
    keys = ("label", "seed", "final", "init", "curve", "collapse", "wall_time_s", "epochs_done")
    baseline = study.user_attrs.get("baseline", []) if strategy == "independent" else []
    runs = [
        {k: attrs.get(k) for k in keys} for attrs in baseline if attrs.get("status") == "completed"
    ]
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.user_attrs.get("strategy") == strategy:
            runs.append({k: trial.user_attrs.get(k) for k in keys})
    return runs


def head_rows(runs: list[dict[str, Any]], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Per run label (baseline first): mean ± sd over seeds, and the gain over the baseline
    paired by seed (mean ± sd of head − baseline on the same seed)."""
    baseline = {r["seed"]: r["final"] for r in runs if r["label"] == "baseline"}
    rows = []
    for label in ["baseline", *labels]:
        mine = [r for r in runs if r["label"] == label]
        row: dict[str, Any] = {"label": label, "n": len(mine)}
        for m in (*PROBES, *DISCREPANCIES):
            row[m] = mean_sd([r["final"][m] for r in mine if _finite(r["final"].get(m))])
        row["wall_time_s"] = mean_sd([r["wall_time_s"] for r in mine])
        for m in ("knn_cls", "linear"):
            pairs = [
                r["final"][m] - baseline[r["seed"]][m]
                for r in mine
                if label != "baseline"
                and _finite(r["final"].get(m))
                and _finite(baseline.get(r["seed"], {}).get(m))
            ]
            row[f"gain_{m}"] = mean_sd(pairs)
            row[f"gain_{m}_n"] = len(pairs)
        rows.append(row)
    return rows


def floor_row(runs: list[dict[str, Any]]) -> dict[str, Stat]:
    """The random-init network's probes: the baseline runs at initialisation (else any run)."""
    source = [r for r in runs if r["label"] == "baseline"] or runs
    return {m: mean_sd([r["init"][m] for r in source if _finite(r["init"].get(m))]) for m in PROBES}


def raw_pixel_row(spec: SearchSpec) -> dict[str, Any]:
    """Raw-pixel k-NN and linear probe per seed on that seed's split, with the runs' bank and
    probe settings (``training.evaluation.floor.pixel_probes``, what runs measure at
    initialisation); the fallback for studies whose runs predate that measurement."""
    knn, linear = [], []
    for seed in spec.seeds():
        cfg = spec.trial_config((), seed)
        train, held = open_dataset(
            cfg.data, cfg.base.img_size, seed=seed, heldout=cfg.heldout, limit=cfg.data_limit
        )
        probes = pixel_probes(
            train,
            held,
            img_size=cfg.base.img_size,
            k=cfg.knn_k,
            temperature=cfg.knn_temperature,
            linear=cfg.linear_probe,
            seed=seed,
            bank_limit=cfg.eval_bank_limit,
        )
        knn.append(probes["pixels_knn"])
        if "pixels_linear" in probes:
            linear.append(probes["pixels_linear"])
    return {"knn_cls": mean_sd(knn), "linear": mean_sd(linear), "n": len(knn)}


def head_mean_correlations(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Spearman ρ over the heads' means (one point per head), with a bootstrap interval."""
    heads = [r for r in rows if r["label"] != "baseline"]
    out = {}
    for d in ("d_kl", "d_cka", "d_loss"):
        for a in PROBES:
            pts = [(r[d][0], r[a][0]) for r in heads if _finite(r[d][0]) and _finite(r[a][0])]
            x, y = [p[0] for p in pts], [p[1] for p in pts]
            lo, hi = bootstrap_ci(x, y)
            out[f"{d}~{a}"] = {"rho": spearman(x, y), "ci": [lo, hi], "n": len(pts)}
    return out


def ranks_of(summaries: list[HeadSummary], objective: str) -> dict[str, int]:
    return {s.label: s.rank for s in rank(summaries, [objective]) if s.rank}


def joint_vs_truth(joint: SearchOutcome, summaries: list[HeadSummary]) -> dict[str, Any]:
    """The joint search's ranking next to the independent runs' ranks (ground truth: k-NN)."""
    truth = {m: ranks_of(summaries, m) for m in ("knn", "linear", "d_kl")}
    means = {s.label: s.mean for s in summaries}
    rows = []
    for head in joint.ranking["heads"]:
        label = head["label"]
        rows.append(
            {
                "label": label,
                "joint_rank": head["rank"] or None,
                "joint_d_kl": head["mean"].get("d_kl"),
                "joint_d_cka": head["mean"].get("d_cka"),
                "rank_knn": truth["knn"].get(label),
                "rank_linear": truth["linear"].get(label),
                "rank_d_kl_independent": truth["d_kl"].get(label),
                "knn_cls": means.get(label, {}).get("knn_cls", NAN),
            }
        )
    both = [r for r in rows if r["joint_rank"] and r["rank_knn"]]
    rho = spearman([-r["joint_rank"] for r in both], [-r["rank_knn"] for r in both])
    top_joint = next((r["label"] for r in rows if r["joint_rank"] == 1), None)
    top_truth = [label for label, place in truth["knn"].items() if place == 1]
    return {
        "rows": rows,
        "rho_joint_vs_knn": rho,
        "n": len(both),
        "top_joint": top_joint,
        "top_knn": top_truth,
        "top1_match": top_joint in top_truth,
    }


def curves(runs: list[dict[str, Any]], labels: Sequence[str], metric: str) -> dict[str, Any]:
    """Mean over seeds of ``metric`` per evaluated epoch (0 = at initialisation), per label."""
    out: dict[str, dict[int, float]] = {}
    for label in ["baseline", *labels]:
        per_epoch: dict[int, list[float]] = {}
        for r in (r for r in runs if r["label"] == label):
            points = [
                (0, r["init"].get(metric)),
                *((c["epoch"], c.get(metric)) for c in r["curve"]),
            ]
            for epoch, value in points:
                if _finite(value):
                    per_epoch.setdefault(epoch, []).append(value)
        out[label] = {e: mean_sd(v)[0] for e, v in sorted(per_epoch.items())}
    return out


# ---------------------------------------------------------------------------- figures


def plot_accuracy(
    rows: list[dict[str, Any]], floor: dict[str, Stat], pixels: dict[str, Any], path: Path
) -> Path:
    """Bars of each run's probe accuracy (mean ± sd over seeds) with the reference lines."""
    fig = Figure(figsize=(12, 5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("knn_cls", "linear"), strict=True):
        values = [r[metric][0] if _finite(r[metric][0]) else 0.0 for r in rows]
        errors = [r[metric][1] if _finite(r[metric][1]) else 0.0 for r in rows]
        colours = ["C3" if r["label"] == "baseline" else "C0" for r in rows]
        ax.bar(range(len(rows)), values, yerr=errors, capsize=3, color=colours)
        ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=40, ha="right")
        ax.tick_params(axis="x", labelsize=8)
        lines = [
            (floor.get(metric, (NAN, NAN))[0], "--", "grey", "random-init floor"),
            (rows[0][metric][0], ":", "C3", "baseline (no head)"),
            (pixels.get(metric, (NAN, NAN))[0], "-.", "C2", "raw pixels"),
        ]
        for value, style, colour, name in lines:
            if _finite(value):
                ax.axhline(value, ls=style, color=colour, label=f"{name} {value:.3f}")
        finite = [v for v in values if v > 0] + [v for v, *_ in lines if _finite(v)]
        if finite:
            ax.set_ylim(max(0.0, min(finite) - 0.1), min(1.0, max(finite) + 0.1))
        ax.set_ylabel(f"{NAMES[metric]} accuracy (mean ± sd over seeds)")
        ax.set_title(NAMES[metric])
        ax.grid(axis="y", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    return path


# ---------------------------------------------------------------------------- Markdown


def pm(stat: Stat, signed: bool = False) -> str:
    mean, sd = stat
    if not _finite(mean):
        return "–"
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return f"{text} ± {sd:.3f}" if _finite(sd) else text


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body]


def _ci(entry: dict[str, Any]) -> str:
    rho, (lo, hi) = entry["rho"], entry["ci"]
    if not _finite(rho):
        return f"n/a (n={entry['n']})"
    interval = f"[{lo:+.2f}, {hi:+.2f}]" if _finite(lo) else "[n/a]"
    return f"{rho:+.2f} {interval} (n={entry['n']})"


def _excludes_zero(entry: dict[str, Any]) -> bool | None:
    lo, hi = entry["ci"]
    if not (_finite(lo) and _finite(hi)):
        return None
    return lo > 0 or hi < 0


def _epochs(curve: dict[str, dict[int, float]]) -> list[int]:
    epochs = sorted({e for points in curve.values() for e in points})
    if len(epochs) <= CURVE_COLUMNS:
        return epochs
    step = (len(epochs) - 1) / (CURVE_COLUMNS - 1)
    return sorted({epochs[round(i * step)] for i in range(CURVE_COLUMNS)})


def _counts(row: dict[str, Any], collapsed_only: bool = False) -> str:
    """``ok 3/3`` or ``uniform 2/3, ok 1/3``: seeds per final collapse status."""
    skip = ("ok", "unknown") if collapsed_only else ()
    items = [(s, c) for s, c in row["counts"].items() if c and s not in skip]
    return ", ".join(f"{s} {c}/{row['n']}" for s, c in items)


def _collapse_cell(row: dict[str, Any] | None) -> str:
    """The main table's collapse column: collapsed runs in bold, so they cannot be missed."""
    if not row or not row["n"]:
        return "–"
    return f"**COLLAPSED: {_counts(row)}**" if row["collapsed"] else _counts(row)


def _gain(cell: dict[str, Any]) -> str:
    """``+0.009 ± 0.020 [-0.041, +0.059] n=3``: a paired gain with its 95% t-interval."""
    if not _finite(cell["mean"]):
        return "–"
    lo, hi = cell["ci"]
    interval = f" [{lo:+.3f}, {hi:+.3f}]" if _finite(lo) else ""
    return f"{pm((cell['mean'], cell['sd']), signed=True)}{interval} n={cell['n']}"


def _rho(stat: Stat) -> str:
    mean, sd = stat
    if not _finite(mean):
        return "n/a"
    return f"{mean:+.2f} ± {sd:.2f}" if _finite(sd) else f"{mean:+.2f}"


def _pct(stat: Stat) -> str:
    mean, sd = stat
    if not _finite(mean):
        return "n/a"
    return f"{100 * mean:.0f} ± {100 * sd:.0f}%" if _finite(sd) else f"{100 * mean:.0f}%"


def summary_sentences(r: dict[str, Any]) -> list[str]:
    """'What the data say': every statement computed from the results, none written in."""
    rows, floor, pixels = r["rows"], r["floor"], r["raw_pixels"]
    base, heads = rows[0], [row for row in rows[1:] if row["n"]]
    out = []
    b, f = base["knn_cls"], floor["knn_cls"]
    if _finite(b[0]) and _finite(f[0]):
        spread = max(b[1], f[1]) if _finite(b[1]) and _finite(f[1]) else 0.0
        where = (
            "above"
            if b[0] - f[0] > spread
            else "below"
            if f[0] - b[0] > spread
            else "within 1 sd of"
        )
        out.append(
            f"The no-head baseline ends at k-NN [CLS] {pm(b)}, {where} the random-init floor "
            f"{pm(f)} (raw pixels: {pm(pixels['knn_cls'])})."
        )
    out += collapse_sentences(r) + floor_sentences(r) + gain_sentences(r)
    scored = [row for row in heads if _finite(row["knn_cls"][0])]
    if scored:
        best = max(scored, key=lambda row: row["knn_cls"][0])
        px = pixels["knn_cls"][0]
        versus = ""
        if _finite(px):
            versus = f", {'above' if best['knn_cls'][0] > px else 'not above'} raw pixels"
        out.append(
            f"The best head by k-NN [CLS] is {best['label']} ({pm(best['knn_cls'])}){versus}."
        )
    for d in ("d_kl", "d_cka"):
        for a in ("knn_cls", "linear"):
            entry = r["correlations"]["per_run"].get(f"{d}~{a}")
            if not entry or not _finite(entry["rho"]):
                continue
            excl = _excludes_zero(entry)
            verdict = (
                "the interval could not be estimated"
                if excl is None
                else "its 95% interval excludes 0"
                if excl
                else "its 95% interval includes 0: no evidence either way"
            )
            out.append(f"Spearman ρ({NAMES[d]}, {NAMES[a]}) over runs = {_ci(entry)}; {verdict}.")
    joint = r["joint"]
    if joint["top_joint"] and joint["top_knn"]:
        match = "is" if joint["top1_match"] else "is not"
        rho = joint["rho_joint_vs_knn"]
        rho_text = f"{rho:+.2f}" if _finite(rho) else "n/a"
        out.append(
            f"The joint search's top head ({joint['top_joint']}) {match} the ground-truth best by "
            f"k-NN ({', '.join(joint['top_knn'])}); Spearman ρ between the two orders = "
            f"{rho_text} over {joint['n']} heads."
        )
    for row in heads:
        spec = row.get("head") or {}
        if spec.get("first_residual") is not False:
            continue
        twin = next(
            (
                other
                for other in heads
                if (other.get("head") or {}) == {**spec, "first_residual": True}
            ),
            None,
        )
        if twin is not None and _finite(row["d_kl"][0]) and _finite(twin["d_kl"][0]):
            change = "raises" if row["d_kl"][0] > twin["d_kl"][0] else "does not raise"
            out.append(
                f"Dropping the first block's residual {change} D_kl for {row['label']} "
                f"({pm(row['d_kl'])} vs {pm(twin['d_kl'])} with it); k-NN "
                f"{pm(row['knn_cls'])} vs {pm(twin['knn_cls'])}."
            )
    curve = r["curves"]["knn_cls"].get("baseline", {})
    if len(curve) >= 3:
        epochs = sorted(curve)
        peak = max(epochs, key=lambda e: curve[e])
        last, prev = curve[epochs[-1]], curve[epochs[-2]]
        trend = "still rising" if last > prev else "no longer rising"
        out.append(
            f"The baseline's mean k-NN [CLS] peaks at epoch {peak} ({curve[peak]:.3f}) and is "
            f"{trend} at the last epoch ({prev:.3f} → {last:.3f})."
        )
    return out + fidelity_sentences(r) + stop_sentences(r)


def _names(labels: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``; ``none`` for no labels."""
    if len(labels) < 2:
        return labels[0] if labels else "none"
    return f"{', '.join(labels[:-1])} and {labels[-1]}"


def collapse_sentences(r: dict[str, Any]) -> list[str]:
    """Which runs end with a collapsed target, and how much the baseline's target carries."""
    rows = [row for row in r["collapse"] if row["n"]]
    if not rows:
        return []
    known = sum(row["n"] - row["counts"]["unknown"] for row in rows)
    total = sum(row["n"] for row in rows)
    bad = [
        f"{row['label']} ({_counts(row, collapsed_only=True)})" for row in rows if row["collapsed"]
    ]
    if not known:
        return [f"No run recorded a collapse status ({total} runs)."]
    said = (
        f"Runs whose target ends collapsed: {', '.join(bad)}"
        if bad
        else "No run ends with a collapsed target"
    )
    out = [f"{said} (status recorded for {known} of {total} runs)."]
    base = rows[0] if rows[0]["label"] == "baseline" else None
    if base and _finite(base["target_information"][0]) and _finite(base["target_entropy"][0]):
        out.append(
            f"The baseline's final target carries {pm(base['target_information'])} nats of "
            f"image information, at entropy {pm(base['target_entropy'])} of ln K "
            f"{base['ln_k']:.3f}."
        )
    return out


def floor_sentences(r: dict[str, Any]) -> list[str]:
    """The floor rule per probe: which runs gained over their own initialisation."""
    parts = []
    for probe in ("knn_cls", "linear"):
        verdicts = {label: cells[probe]["learned"] for label, cells in r["above_floor"].items()}
        judged = {label: v for label, v in verdicts.items() if v is not None}
        if judged:
            learned = [label for label, v in judged.items() if v]
            count = f"{len(learned)} of {len(judged)}"
            parts.append(
                f"on {NAMES[probe]} {count} (baseline and heads) learned: {_names(learned)}"
            )
    if not parts:
        return []
    rule = "final − init > 0 on every seed and the mean above 2 sd"
    return [f"By the floor rule ({rule}): {'; '.join(parts)}."]


def gain_sentences(r: dict[str, Any]) -> list[str]:
    """Per probe: the heads whose paired 95% t-interval over the baseline excludes 0."""
    out, silent = [], []
    for probe in PROBES:
        cells = {label: g[probe] for label, g in r["gains"].items() if g[probe]["n"] >= 2}
        if not cells:
            continue
        up = [f"{k} ({_gain(c)})" for k, c in cells.items() if c["excludes_zero"] and c["mean"] > 0]
        down = [
            f"{k} ({_gain(c)})" for k, c in cells.items() if c["excludes_zero"] and c["mean"] < 0
        ]
        if not up and not down:
            silent.append(NAMES[probe])
            continue
        parts = [f"is above 0 for {', '.join(up)}"] if up else []
        parts += [f"is below 0 for {', '.join(down)}"] if down else []
        rest = len(cells) - len(up) - len(down)
        heads = "head" if rest == 1 else "heads"
        tail = f"; it spans 0 for the other {rest} {heads} (no signal)" if rest else ""
        out.append(
            f"On {NAMES[probe]}, the 95% t-interval of head − baseline paired by seed "
            + "; ".join(parts)
            + tail
            + "."
        )
    if silent:
        out.append(
            f"On {_names(silent)}, the 95% t-interval of head − baseline paired by seed "
            "spans 0 for every head: no signal either way."
        )
    return out


def fidelity_sentences(r: dict[str, Any]) -> list[str]:
    """How well the first evaluated epoch's order of the heads matches the final one."""
    out = []
    for kind, metrics in (("independent", ("d_kl", "d_cka", "knn_cls")), ("joint", JOINT_METRICS)):
        fid = r["fidelity"][kind]
        row = next((row for row in fid["rows"] if row["epoch"] >= 1), None)
        if row is None or row["epoch"] == fid["final_epoch"]:
            continue
        said = [
            f"{NAMES[m]} {_rho(row[m])} ({row[f'{m}_n']} seeds)" for m in metrics if row[f"{m}_n"]
        ]
        if said:
            out.append(
                f"Spearman ρ between the {kind} runs' order of the heads at epoch {row['epoch']} "
                f"and their final order (epoch {fid['final_epoch']}): {', '.join(said)}."
            )
    return out


def stop_sentences(r: dict[str, Any]) -> list[str]:
    """What stop_when_stable would have saved on the joint runs, and at what fidelity."""
    parts = []
    for row in r["stop_when_stable"]["rows"]:
        if not row["seeds"]:
            continue
        rho = f", order at ρ = {_rho(row['rho'])} to the final one" if row["stopped"] else ""
        parts.append(
            f"patience {row['patience']} stops {row['stopped']} of {len(row['seeds'])} "
            f"(epochs {_stops(row)}), saving {_pct(row['saved'])} of the epochs{rho}"
        )
    if not parts:
        return []
    return [f"Replaying stop_when_stable on the joint runs: {'; '.join(parts)}."]


def _stops(row: dict[str, Any]) -> str:
    """The stop epoch per seed, in seed order (``never``: the rule did not stop that run)."""
    return ", ".join(
        "never" if s["stop_epoch"] is None else str(s["stop_epoch"]) for s in row["seeds"]
    )


def main_table_note(r: dict[str, Any]) -> str:
    """Where the reference rows come from, and what the columns mean."""
    in_runs = r["raw_pixels"].get("source") == "runs"
    pixels = (
        "Raw pixels: measured inside each run at initialisation on its seed's split (k-NN with "
        "the same k and temperature, linear probe on the flattened normalised pixels), one "
        "value per seed."
        if in_runs
        else "Raw pixels: k-NN (same k and temperature) and linear probe on the flattened "
        "normalised pixels, computed here per seed (the runs did not measure them)."
    )
    bn = (
        " with BN statistics recalibrated on training images first"
        if in_runs and r.get("floor_recalibrated_bn")
        else ""
    )
    return (
        f"{pixels} Floor: the baseline network at initialisation (epoch 0){bn}. collapse: seeds "
        "per final status of the global target the run learns through (bold: some collapsed). "
        "Δ: head − baseline on the same seed, mean ± sd over seeds; † its 95% t-interval "
        "excludes 0. D_kl = D_loss − H(target); D_cka = 1 − linear CKA."
    )


def collapse_section(r: dict[str, Any]) -> list[str]:
    """Seeds per final collapse status and the final target's information and entropy."""
    body = [
        [
            row["label"],
            str(row["n"]),
            *(str(row["counts"].get(s, 0)) for s in (*STATUSES, "unknown")),
            pm(row["target_information"]),
            pm(row["target_entropy"]),
            f"{row['entropy_fraction']:.3f}" if _finite(row["entropy_fraction"]) else "–",
        ]
        for row in r["collapse"]
    ]
    ln_k = r["collapse"][0]["ln_k"] if r["collapse"] else NAN
    header = ["run", "n", *STATUSES, "unknown", "target information (nats)", "H(target)"]
    return [
        "## Collapse of the learning target (final evaluation)",
        "",
        *_table([*header, f"H / ln K (ln K = {ln_k:.3f})"], body),
        "",
        "Status of the global target each run learns through at its last evaluation (a head "
        "run: its head's target; the baseline: its [CLS] target): uniform = it carries almost "
        "no information about the image, one-hot = every image goes to one prototype. Target "
        "information = H(mean target) − mean H(target), mean ± sd over seeds.",
        "",
    ]


def gain_section(r: dict[str, Any]) -> list[str]:
    """Paired gains over the baseline per head and probe with their 95% t-intervals."""
    body = []
    for label, cells in r["gains"].items():
        body.append([label, *(_bold(_gain(cells[p]), cells[p]["excludes_zero"]) for p in PROBES)])
    return [
        "## Gain over the baseline, paired by seed (95% t-interval)",
        "",
        *_table(["head", *(f"Δ {NAMES[p]}" for p in PROBES)], body),
        "",
        "Head − baseline on the same seed: mean ± sd, [95% t-interval of the mean], n seeds. "
        "Bold: the interval excludes 0. No interval below 2 seeds.",
        "",
    ]


def _bold(text: str, flag: bool | None) -> str:
    return f"**{text}**" if flag else text


def floor_section(r: dict[str, Any]) -> list[str]:
    """Final − init per run label and probe, with the floor rule's verdict."""
    verdicts = {True: "learned", False: "not learned", None: "n/a"}
    body = [
        [
            "baseline (iBOT, no head)" if label == "baseline" else label,
            *(
                f"{pm((c['mean'], c['sd']), signed=True)} n={c['n']}: {verdicts[c['learned']]}"
                for c in (cells[p] for p in PROBES)
            ),
        ]
        for label, cells in r["above_floor"].items()
    ]
    return [
        "## Above the floor? (final − initialisation, per seed)",
        "",
        *_table(["run", *(NAMES[p] for p in PROBES)], body),
        "",
        "A run's gain counts as learning only if final − init > 0 on every seed and the mean "
        "exceeds 2 sd (n/a below 2 seeds).",
        "",
    ]


def _fidelity_table(fid: dict[str, Any]) -> list[str]:
    metrics = fid["metrics"]
    if not fid["rows"]:
        return ["No completed runs."]
    body = [
        [
            str(row["epoch"]),
            *(f"{_rho(row[m])} ({row[f'{m}_n']})" if row[f"{m}_n"] else "–" for m in metrics),
        ]
        for row in fid["rows"]
    ]
    return _table(["epoch", *(NAMES[m] for m in metrics)], body)


def fidelity_section(r: dict[str, Any]) -> list[str]:
    """Spearman ρ between the heads' order at each epoch and their final order."""
    ind, joint = r["fidelity"]["independent"], r["fidelity"]["joint"]
    return [
        "",
        "## Fidelity: does an epoch's order of the heads match the final order?",
        "",
        "Spearman ρ over one seed's heads between a metric at that epoch and at each run's last "
        "evaluation, mean ± sd over seeds (number of seeds where ρ is defined); epoch 0 = "
        "initialisation.",
        "",
        "Independent runs (one run per head and seed):",
        "",
        *_fidelity_table(ind),
        "",
        "Joint runs (one run per seed, every head attached):",
        "",
        *_fidelity_table(joint),
    ]


def stop_section(r: dict[str, Any]) -> list[str]:
    """The stop_when_stable replay on the joint runs."""
    stop = r["stop_when_stable"]
    body = [
        [
            str(row["patience"]),
            f"{row['stopped']} of {len(row['seeds'])}",
            _stops(row) or "–",
            _pct(row["saved"]),
            _rho(row["rho"]),
        ]
        for row in stop["rows"]
    ]
    objectives = " and ".join(NAMES[m] for m in stop["objectives"])
    return [
        "",
        "## stop_when_stable replayed on the joint runs",
        "",
        *_table(
            [
                "patience",
                "seeds stopped",
                "stop epoch per seed",
                "epochs saved",
                "ρ(order at stop, final order), stopped seeds",
            ],
            body,
        ),
        "",
        f"The order is the heads' mean rank over {objectives} (ties by label); the rule stops "
        "once that order has not changed for `patience` evaluations after epoch 1. Stop epochs in "
        "seed order; epochs saved: mean ± sd over seeds (a run never stopped saves nothing); ρ: "
        "mean ± sd over the seeds it stopped.",
    ]


def markdown(r: dict[str, Any]) -> str:
    plan, t = r["plan"], r["timing"]
    budget = plan["budget"]
    lines = [
        f"# HSSL head study — scale `{r['scale']}` on `{r['device']}`",
        "",
        f"Generated by `python bench/study.py --scale {r['scale']}` from `bench/study.yaml`. "
        f"Data `{plan['data']}` (data_limit {budget.get('data_limit')}), base "
        f"`{plan['base']['name']}` {json.dumps(plan['base'])}, {budget['epochs']} epochs, "
        f"batch {budget['batch_size']}, {plan['seeds']} paired seeds, eval every epoch. "
        f"Probes on teacher-base features of held-out images; mean ± sd over seeds. This "
        f"invocation took {t['invocation_s']:.0f} s and trained {t['trained_now']} run(s); "
        f"the study holds {t['independent_trials']} independent trials, "
        f"{t['baseline_runs']} baseline runs and {t['joint_trials']} joint trials.",
        "",
        "## Probe accuracy and discrepancy per run",
        "",
    ]
    header = [
        "run",
        "n",
        "collapse",
        *(NAMES[m] for m in PROBES),
        *(NAMES[m] for m in DISCREPANCIES),
        "Δ k-NN vs baseline",
        "Δ linear vs baseline",
        "wall s",
    ]
    floor, pixels = r["floor"], r["raw_pixels"]
    blank = ["–"] * len(DISCREPANCIES)
    body = [
        [
            "raw pixels (reference)",
            str(pixels["n"]),
            "–",
            pm(pixels["knn_cls"]),
            "–",
            pm(pixels["linear"]),
            *blank,
            "–",
            "–",
            "–",
        ],
        [
            "random-init network (floor)",
            str(r["rows"][0]["n"]),
            "–",
            *(pm(floor[m]) for m in PROBES),
            *blank,
            "–",
            "–",
            "–",
        ],
    ]
    collapse = {row["label"]: row for row in r["collapse"]}
    gains = r["gains"]

    def delta(label: str, metric: str, stat: Stat) -> str:
        cell = gains.get(label, {}).get(metric, {})
        return pm(stat, signed=True) + (" †" if cell.get("excludes_zero") else "")

    for row in r["rows"]:
        body.append(
            [
                "baseline (iBOT, no head)" if row["label"] == "baseline" else row["label"],
                str(row["n"]),
                _collapse_cell(collapse.get(row["label"])),
                *(pm(row[m]) for m in PROBES),
                *(pm(row[m]) for m in DISCREPANCIES),
                delta(row["label"], "knn_cls", row["gain_knn_cls"]),
                delta(row["label"], "linear", row["gain_linear"]),
                f"{row['wall_time_s'][0]:.0f}" if _finite(row["wall_time_s"][0]) else "–",
            ]
        )
    lines += _table(header, body)
    lines += ["", main_table_note(r), ""]
    lines += collapse_section(r) + gain_section(r) + floor_section(r)
    lines += ["## Does discrepancy track accuracy? (Spearman ρ, 95% bootstrap interval)", ""]
    corr = r["correlations"]
    body = [
        [
            f"{NAMES[d]} vs {NAMES[a]}",
            _ci(corr["per_run"][f"{d}~{a}"]),
            _ci(corr["per_head"][f"{d}~{a}"]),
        ]
        for d in ("d_kl", "d_cka", "d_loss")
        for a in PROBES
    ]
    lines += _table(["pair", "over runs (heads × seeds)", "over head means"], body)
    lines += ["", "## Joint search ranking vs the ground truth", ""]
    joint = r["joint"]
    body = [
        [
            row["label"],
            str(row["joint_rank"] or "–"),
            f"{row['joint_d_kl']:.3f}" if _finite(row["joint_d_kl"]) else "–",
            f"{row['joint_d_cka']:.3f}" if _finite(row["joint_d_cka"]) else "–",
            str(row["rank_knn"] or "–"),
            str(row["rank_linear"] or "–"),
            str(row["rank_d_kl_independent"] or "–"),
            f"{row['knn_cls']:.3f}" if _finite(row["knn_cls"]) else "–",
        ]
        for row in joint["rows"]
    ]
    lines += _table(
        [
            "head",
            "joint rank (D_kl, D_cka)",
            "joint D_kl",
            "joint D_cka",
            "rank by k-NN (ground truth)",
            "rank by linear",
            "rank by D_kl (own runs)",
            "k-NN [CLS]",
        ],
        body,
    )
    for metric in ("knn_cls", "knn_patch"):
        curve = r["curves"][metric]
        epochs = _epochs(curve)
        lines += ["", f"## Learning curve: {NAMES[metric]} per epoch (mean over seeds)", ""]
        body = [
            [label, *(f"{points[e]:.3f}" if e in points else "–" for e in epochs)]
            for label, points in curve.items()
        ]
        lines += _table(["run", *(f"ep {e}" for e in epochs)], body)
    lines += fidelity_section(r) + stop_section(r)
    lines += ["", "## What the data say", "", " ".join(summary_sentences(r)) or "No data yet."]
    lines += [
        "",
        "## Files",
        "",
        "- `results.json`: every number above, every run's per-epoch curve, the specs",
        "- `discrepancy_vs_accuracy.png`: D_kl vs k-NN [CLS] per head (independent runs)",
        "- `accuracy_per_head.png`: k-NN [CLS] and linear per run with floor, baseline, pixels",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- driver


def run_study(
    scale: str,
    *,
    config: Path = CONFIG,
    out_dir: Path | None = None,
    work_dir: Path | None = None,
    progress: bool = True,
    only: str | None = None,
    report_only: bool = False,
    join: bool = False,
) -> dict[str, Any]:
    """Train what is missing, then write the outputs. ``only`` ("independent" or "joint")
    trains that search alone and writes nothing, so the two can train in parallel processes;
    a later plain invocation reuses both and writes the report. ``report_only`` trains
    nothing and reports the runs finished so far (the table's n says how many per head).
    ``join`` (with ``only="independent"``) trains beside a live process on the same study,
    taking the runs it has neither finished nor started."""
    started = time.perf_counter()
    plan = load_plan(config, scale)
    device = device_label()
    tag = f"{scale}-{device}"
    out_dir = out_dir or ROOT / "docs" / "study" / tag
    work_dir = work_dir or ROOT / "hssl-data" / "study" / tag
    specs = study_specs(plan)
    trained = {"n": 0}

    def on_event(kind: str, data: dict[str, Any]) -> None:
        trained["n"] += kind == "trial.started"

    if only is not None:
        specs = {only: specs[only]}
    if report_only:
        outcomes = {k: stored_outcome(spec, work_dir) for k, spec in specs.items()}
    else:
        outcomes = {
            strategy: run_search(
                spec,
                work_dir,
                resume=True,
                progress=progress,
                isolate=bool(plan.get("isolate", True)),
                on_event=on_event,
                reconcile=not join,
            )
            for strategy, spec in specs.items()
        }
    if only is not None:
        outcome = outcomes[only]
        return {
            "device": device,
            "timing": {
                "invocation_s": time.perf_counter() - started,
                "trained_now": trained["n"],
                "status": {only: outcome.status},
            },
        }
    spec = specs["independent"]
    study = optuna.load_study(
        study_name=outcomes["independent"].study,
        storage=make_storage(outcomes["independent"].storage),
    )
    joint_study = optuna.load_study(
        study_name=outcomes["joint"].study, storage=make_storage(outcomes["joint"].storage)
    )
    try:
        heads = spec.space.candidates()
        labels = [h.label() for h in heads]
        runs = completed_runs(study)
        rows = head_rows(runs, labels)
        for row, head in zip(rows[1:], heads, strict=True):
            row["head"] = head.to_dict()
        recs = [rec for rec in records(study) if rec.strategy == "independent"]
        summaries = summarize(recs)
        report = report_of(study, spec)
        joint_runs = completed_runs(joint_study, "joint")
        probe_config = spec.trial_config((), spec.seeds()[0])
        ln_k = math.log(probe_config.out_dim)
        results: dict[str, Any] = {
            "scale": scale,
            "device": device,
            "torch": torch.__version__,
            "plan": plan,
            "specs": {k: s.model_dump(mode="json") for k, s in specs.items()},
            "rows": rows,
            "floor": floor_row(runs),
            "floor_recalibrated_bn": probe_config.recalibrate_bn,
            "raw_pixels": pixel_reference(runs) or {**raw_pixel_row(spec), "source": "computed"},
            "collapse": collapse_table(runs, labels, ln_k),
            "gains": paired_gains(runs, labels),
            "above_floor": above_floor(runs, labels),
            "fidelity": {
                "independent": fidelity(runs),
                "joint": fidelity(joint_runs, JOINT_METRICS),
            },
            "stop_when_stable": simulate_stop(joint_runs),
            "correlations": {
                "per_run": correlations(recs, ("d_kl", "d_cka", "d_loss"), PROBES),
                "per_head": head_mean_correlations(rows),
            },
            "joint": joint_vs_truth(outcomes["joint"], summaries),
            "curves": {m: curves(runs, labels, m) for m in PROBES[:2]},
            "runs": runs,
            "joint_runs": joint_runs,
            "timing": {
                "invocation_s": time.perf_counter() - started,
                "trained_now": trained["n"],
                "independent_trials": len(study.trials),
                "baseline_runs": len(study.user_attrs.get("baseline", [])),
                "joint_trials": len(joint_study.trials),
                "status": {k: o.status for k, o in outcomes.items()},
            },
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_search(
            report["ranked"],
            out_dir / "discrepancy_vs_accuracy.png",
            discrepancy="d_kl",
            accuracy="knn",
            baseline=report["baseline"],
            title=f"HSSL head study, {tag}: independent runs",
        )
        plot_accuracy(
            rows, results["floor"], results["raw_pixels"], out_dir / "accuracy_per_head.png"
        )
    finally:
        close_study(study)
        close_study(joint_study)
    (out_dir / "study.md").write_text(markdown(results))
    (out_dir / "results.json").write_text(
        json.dumps(plain_json(results), indent=1, allow_nan=False) + "\n"
    )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=SCALES, default="cpu")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument(
        "--out", type=Path, default=None, help="default docs/study/<scale>-<device>"
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="studies and run folders (checkpoints)"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: report the runs finished so far",
    )
    parser.add_argument(
        "--join",
        action="store_true",
        help="with --only independent: train beside a live process on the same study",
    )
    parser.add_argument(
        "--only",
        choices=("independent", "joint"),
        default=None,
        help="train this search only and write no outputs (run both in parallel, then once plain)",
    )
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results = run_study(
        args.scale,
        config=args.config,
        out_dir=args.out,
        work_dir=args.work,
        progress=not args.no_progress,
        only=args.only,
        report_only=args.report_only,
        join=args.join,
    )
    t = results["timing"]
    print(json.dumps({"scale": args.scale, "device": results["device"], **plain_json(t)}))


if __name__ == "__main__":
    sys.exit(main())
