"""The recommendation a user downloads: the best head with its evidence and provenance, and the
exact command for full HSSL pre-training with it. ``hssl train --config recommendation.yaml``
builds the head from this file alone (it reads ``trial_config``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from search.spec import SearchSpec
from training.errors import HSSLError
from training.recipe import TrialConfig
from training.specs import HeadSpec

SCHEMA = "hssl-search/recommendation/v1"


def build_recommendation(
    spec: SearchSpec,
    ranking: dict[str, Any],
    *,
    study: str,
    storage: str,
    data: dict[str, Any],
    versions: dict[str, Any],
) -> dict[str, Any]:
    """``ranking`` is ``search.ranking.ranking_json``'s output; its first head is the pick —
    unless the ranking carries a ``decision`` (the staged strategy) that keeps the baseline:
    then the recommendation is plain iBOT pre-training with no auxiliary head, and says why."""
    decision = ranking.get("decision") or {}
    heads = [row for row in ranking["heads"] if row.get("head") and row.get("n", 0) > 0]
    if decision.get("keep_baseline"):
        best, head_specs = ranking.get("baseline") or {"label": "baseline"}, ()
    elif heads:
        best = heads[0]
        head_specs = (_head_spec(best),)
    else:
        collapsed = sum(row.get("collapsed", 0) for row in ranking["heads"])
        why = f" ({collapsed} run(s) collapsed)" if collapsed else ""
        raise HSSLError(f"no candidate completed a run that learned{why}: nothing to recommend")
    full = TrialConfig.paper(spec.base.full(), head_specs, data=spec.data)
    proxy = spec.trial_config(head_specs, spec.seed)
    return {
        "schema": SCHEMA,
        "head": best.get("head"),
        "head_label": best["label"],
        # why this head (staged: the paired gain, or why the baseline is kept)
        "decision": decision.get("line", ""),
        # whether the probes say anything beyond discrepancy (the one line to read first)
        "quality_signal": (ranking.get("signal") or {}).get("line", ""),
        # which metric ranked, how well it predicted quality in the reference study, and why
        "evidence": ranking.get("evidence"),
        "base": spec.base.model_dump(mode="json"),
        "metrics": best,
        "seed": spec.seed,
        "objectives": list(spec.objectives),
        "strategy": spec.strategy,
        "trial_config": full.to_dict(),
        "proxy_config": proxy.to_dict(),
        "data": data,
        "versions": versions,
        "lineage": {
            "study": study,
            "storage": _redact(storage),
            "trials": best.get("trials", []),
            "stages": ranking.get("stages"),
            "search_spec": spec.model_dump(mode="json"),
        },
        "commands": commands(spec),
        "ranking": ranking,
    }


def commands(spec: SearchSpec) -> dict[str, str]:
    base = f"--config recommendation.yaml --data {spec.data} --out runs/{spec.base.name}-hssl"
    return {
        "train": f"hssl train {base}",
        "torchrun": f'torchrun --standalone --nproc-per-node 8 "$(which hssl)" train {base}',
        "torchrun_multinode": (
            "torchrun --nnodes 2 --node-rank $NODE_RANK --nproc-per-node 8 --rdzv-backend c10d "
            f'--rdzv-endpoint $MASTER_HOST:29500 "$(which hssl)" train {base}'
        ),
        "export": f"hssl export runs/{spec.base.name}-hssl/checkpoint.pt --out base.safetensors",
        # the paper's number: MAE's fine-tuning recipe on the pre-trained base (8 GPUs x 128)
        "finetune": (
            'torchrun --standalone --nproc-per-node 8 "$(which hssl)" finetune --recipe mae '
            f"--init base.safetensors --data {spec.data} --out runs/{spec.base.name}-finetune"
        ),
    }


def write_recommendation(rec: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "recommendation.json", "yaml": out / "recommendation.yaml"}
    paths["json"].write_text(json.dumps(rec, indent=2) + "\n")
    paths["yaml"].write_text(yaml.safe_dump(rec, sort_keys=False))
    return paths


def load_recommendation(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise HSSLError(f"{path} is not a recommendation file ({SCHEMA})")
    return data


def _head_spec(row: dict[str, Any]) -> HeadSpec:
    return HeadSpec.from_dict(row["head"])


def _redact(url: str) -> str:
    """Never write a database password into a file users share."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
