"""What a calibration search hands back (``search.calibrate``): the trials as a table and as a
ranking JSON, and the best recipe as ``trial_overrides`` to paste into a search spec.

The ranking keeps the shape the service and the remote CLI read (``objectives`` and ``heads``
rows with ``label``, ``n``, ``mean``, ``floor``), one row per calibration trial (``head`` is
None, ``recipe`` holds its knobs), best gain per minute first and failed trials last with their
reasons. The recommendation carries the best recipe under ``trial_overrides`` and a ready
search spec using it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import yaml

from search.calibrate import STRATEGY, probe_of
from search.jsonable import plain_json
from search.provenance import data_fingerprint
from search.recommendation import write_recommendation
from search.spec import SearchSpec
from training.errors import HSSLError

SCHEMA = "hssl-search/calibration/v1"
RULE = "gain of the probe over its random-init floor per wall-clock minute (largest first)"
USAGE = (
    "paste trial_overrides into a search spec with the same base, data and budget (or use "
    "search_spec): its proxy runs then train with the calibrated recipe"
)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per finished calibration trial: completed by value (best first), then failed."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if attrs.get("strategy") != STRATEGY or not t.state.is_finished():
            continue
        probe = attrs.get("probe", "knn_cls")
        final, init = attrs.get("final", {}), attrs.get("init", {})
        ok = t.state.name == "COMPLETE"
        rows.append(
            {
                "label": attrs.get("label", f"recipe-{t.number}"),
                "head": None,
                "recipe": dict(attrs.get("recipe", t.params)),
                "state": t.state.name,
                "n": int(ok),
                "failed": int(not ok),
                "failure_reasons": [] if ok else [attrs.get("failure_reason") or "failed"],
                "mean": {**final, "gain_per_min": t.value if ok else None},
                "floor": dict(init),
                "gain": {probe: attrs.get("gain")},
                "minutes": attrs.get("minutes"),
                "collapse": attrs.get("collapse"),
                "trials": [t.number],
            }
        )
    rows.sort(key=lambda r: (-r["n"], -(r["mean"]["gain_per_min"] or 0.0), r["trials"][0]))
    for place, row in enumerate(rows, 1):
        row["rank"] = place if row["n"] else 0
    return rows


def best_recipe(spec: SearchSpec, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The spec's ``trial_overrides`` with the best trial's knobs on top (None if none counts)."""
    best = next((r for r in rows if r["n"]), None)
    return None if best is None else {**spec.trial_overrides, **best["recipe"]}


def calibration_report(study: optuna.Study, spec: SearchSpec) -> dict[str, Any]:
    """``table`` (text) and ``ranking`` (JSON-able), as ``search.run.report_of`` returns."""
    rows, probe = trial_rows(study), probe_of(spec)
    ranking = plain_json(
        {
            "kind": STRATEGY,
            "objectives": ["gain_per_min"],
            "probe": probe,
            "rule": RULE,
            "heads": rows,
            "trial_overrides": best_recipe(spec, rows),
            "baseline": None,
        }
    )
    return {"table": trials_table(rows, probe), "ranking": ranking}


def trials_table(rows: list[dict[str, Any]], probe: str) -> str:
    """Fixed-width text: knobs, gain, minutes and status of every trial, reasons of failures."""
    knobs = list(dict.fromkeys(k for r in rows for k in r["recipe"]))
    header = ["rank", "trial", *knobs, f"{probe} gain", "minutes", "gain/min", "status"]
    lines = [header]
    for r in rows:
        gain, per_min = r["gain"].get(probe), r["mean"]["gain_per_min"]
        status = (
            "ok" if r["n"] else (r["collapse"] if r["collapse"] not in (None, "ok") else "failed")
        )
        lines.append(
            [
                str(r["rank"] or "–"),
                r["label"],
                *(_cell(r["recipe"].get(k)) for k in knobs),
                _cell(gain, "+.3f"),
                _cell(r["minutes"], ".2f"),
                _cell(per_min, "+.4f"),
                status,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    text.append(f"value: {probe} {RULE}; collapsed or failed runs are failed trials")
    text.extend(f"failed: {r['label']}: {r['failure_reasons'][0]}" for r in rows if not r["n"])
    return "\n".join(text)


def recipe_recommendation(
    spec: SearchSpec,
    ranking: dict[str, Any],
    *,
    study: str,
    data: dict[str, Any],
    versions: dict[str, Any],
) -> dict[str, Any]:
    """The download of a calibration: the best recipe, its evidence and how to use it."""
    recipe = ranking["trial_overrides"]
    best = next(r for r in ranking["heads"] if r["n"])
    target = {**spec.model_dump(mode="json"), "strategy": "joint", "trial_overrides": recipe}
    target.pop("objectives")  # the search's own default objectives
    return {
        "schema": SCHEMA,
        "strategy": STRATEGY,
        "trial_overrides": recipe,
        "usage": USAGE,
        "probe": ranking["probe"],
        "metrics": best,
        "base": spec.base.model_dump(mode="json"),
        "seed": spec.seed,
        "search_spec": {**target, "name": None},
        "data": data,
        "versions": versions,
        "lineage": {
            "study": study,
            "trials": best["trials"],
            "search_spec": spec.model_dump(mode="json"),
        },
        "ranking": ranking,
    }


def write_recipe(recipe: dict[str, Any], path: str | Path, note: str = USAGE) -> Path:
    """The best recipe as YAML under ``trial_overrides:`` (pasteable into a spec as it is)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump({"trial_overrides": recipe}, sort_keys=False)
    out.write_text(f"# {note}\n{body}")
    return out


def write_calibration(
    spec: SearchSpec,
    ranking: dict[str, Any],
    out_dir: Path,
    study: str,
    versions: dict[str, Any],
) -> dict[str, Path]:
    """ranking.json always; recipe.yaml and recommendation.json/.yaml once a trial counted
    (the keys ``json``/``yaml`` are what the service and ``hssl search run`` look for)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"ranking": out_dir / "ranking.json"}
    files["ranking"].write_text(json.dumps(ranking, indent=2) + "\n")
    if ranking["trial_overrides"] is None:
        return files  # nothing counted: the ranking lists every trial's reason
    try:
        data = data_fingerprint(spec.data, spec.base.img_size)
    except HSSLError as exc:  # the data went away after the runs: say so, keep the recipe
        data = {"source": spec.data, "error": str(exc)}
    rec = recipe_recommendation(spec, ranking, study=study, data=data, versions=versions)
    files["recipe"] = write_recipe(rec["trial_overrides"], out_dir / "recipe.yaml")
    files.update(write_recommendation(rec, out_dir))
    return files


def _cell(value: Any, fmt: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not fmt:
        return f"{value:.3g}"
    return format(value, fmt)
