"""Joint vs independent search on the built-in real data set: wall time and agreement.

Prints one JSON line: wall time of ``joint`` (all candidates on one base, one run per seed) and
of ``independent`` (one run per candidate and seed), their ratio (target ≤ 0.5), and how well
joint's discrepancy ranking agrees with independent's probe-accuracy ranking (top-1 match and
Spearman ρ) — reported as measured, whatever it is.

    python bench/search_efficiency.py --epochs 2 --data-limit 4000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from search.run import run_search
from search.spec import SearchSpec
from search.stats import spearman

HEADS = [
    "convnext:depth=2,kernel=5",
    "resnet:depth=2,kernel=3",
    "mlp:depth=2",
    "transformer:depth=2",
]  # transformer: the homogeneous control for a ViT base


def spec(strategy: str, args: argparse.Namespace) -> SearchSpec:
    objectives = ["d_kl", "d_cka"] if strategy == "joint" else [args.accuracy, "d_kl"]
    return SearchSpec.model_validate(
        {
            "name": f"efficiency-{strategy}",
            "data": args.data,
            "strategy": strategy,
            "space": {"heads": HEADS},
            "objectives": objectives,
            "seed": args.seed,
            "budget": {
                "epochs": args.epochs,
                "seeds": args.seeds,
                "data_limit": args.data_limit,
                "batch_size": args.batch_size,
            },
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="animal-mnist")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--data-limit", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--accuracy", default="knn", choices=["knn", "linear"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="hssl-efficiency-"))
    outcomes, seconds = {}, {}
    for strategy in ("joint", "independent"):
        started = time.perf_counter()
        outcomes[strategy] = run_search(spec(strategy, args), data_dir, resume=True, progress=False)
        seconds[strategy] = time.perf_counter() - started
    joint = {r["label"]: r for r in outcomes["joint"].ranking["heads"] if r["n"]}
    indep = {r["label"]: r for r in outcomes["independent"].ranking["heads"] if r["n"]}
    metric = "knn_cls" if args.accuracy == "knn" else "linear"
    labels = sorted(set(joint) & set(indep))
    accuracy = [indep[lbl]["mean"][metric] for lbl in labels]
    joint_order = sorted(labels, key=lambda lbl: joint[lbl]["rank"])
    by_accuracy = sorted(labels, key=lambda lbl: -indep[lbl]["mean"][metric])
    print(
        json.dumps(
            {
                "data": args.data,
                "epochs": args.epochs,
                "seeds": args.seeds,
                "data_limit": args.data_limit,
                "candidates": len(HEADS),
                "joint_s": round(seconds["joint"], 1),
                "independent_s": round(seconds["independent"], 1),
                "joint_vs_independent_time": round(seconds["joint"] / seconds["independent"], 3),
                "joint_ranking": joint_order,
                "independent_by_accuracy": by_accuracy,
                "top1_match": bool(joint_order and joint_order[0] == by_accuracy[0]),
                "spearman_joint_rank_vs_accuracy": spearman(
                    [-joint[lbl]["rank"] for lbl in labels], accuracy
                ),
                "spearman_joint_d_kl_vs_accuracy": spearman(
                    [joint[lbl]["mean"]["d_kl"] for lbl in labels], accuracy
                ),
                "spearman_joint_d_cka_vs_accuracy": spearman(
                    [joint[lbl]["mean"]["d_cka"] for lbl in labels], accuracy
                ),
                "accuracy_above_floor": {lbl: indep[lbl]["gain"][metric] for lbl in labels},
                "target_met": seconds["joint"] <= 0.5 * seconds["independent"],
            }
        )
    )


if __name__ == "__main__":
    main()
