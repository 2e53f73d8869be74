"""Study v2 (issue 21): does any label-free metric predict what the base learns?

Pre-registered in ``docs/study/v2/PLAN.md`` (committed before the first run) and driven by
``bench/study_v2.yaml``. Three searches, each one Optuna study in one SQLite storage under
``--work`` (default ``hssl-data/study/v2``):

* ``contrast``: ConvNeXt d2 k3 without vs with the first residual vs the no-head baseline, on 8
  paired seeds (independent runs);
* ``panel``: 24 distinct heads + the baseline on 2 paired seeds (independent runs);
* ``joint``: the paper's joint search over the panel's heads on the same 2 seeds.

Resumable run by run (a cut-off run continues from its checkpoint); two processes may train
one part together (the second with ``--join``). ``--report`` (or a run that finishes) writes
``docs/study/v2/``: ``results.json`` (every run's numbers), ``report.md`` and plots, from the
runs finished so far — the report says how many that is.

    OMP_NUM_THREADS=1 nohup .venv/bin/python bench/study_v2.py --part contrast &
    OMP_NUM_THREADS=1 nohup .venv/bin/python bench/study_v2.py --part panel &
    .venv/bin/python bench/study_v2.py --report          # train nothing, write the report
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import yaml

from search.run import run_search
from search.spec import SearchSpec
from training.runtime.threads import apply_thread_policy

ROOT = Path(__file__).resolve().parents[1]
CONFIG = Path(__file__).with_name("study_v2.yaml")
PARTS = ("contrast", "panel", "joint")
RESERVED_SEEDS = range(100, 200)  # checks outside the study


def load_plan(path: Path = CONFIG) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def part_specs(plan: dict[str, Any]) -> dict[str, SearchSpec]:
    """The three searches of the plan, as the specs a user would submit."""
    common = {
        "base": plan["base"],
        "data": plan["data"],
        "recipe": plan.get("recipe", "proxy"),
        "trial_overrides": plan.get("trial_overrides", {}),
    }
    specs = {}
    for part in PARTS:
        source = plan["parts"]["panel" if part == "joint" else part]
        independent = part != "joint"
        spec = SearchSpec.model_validate(
            {
                **common,
                "name": f"study-v2-{part}",
                "space": {"heads": source["heads"]},
                "seed": source["seed"],
                "budget": {**plan["budget"], "seeds": source["seeds"]},
                "strategy": "independent" if independent else "joint",
                "objectives": ["linear", "d_kl"] if independent else ["d_kl", "d_cka"],
                "include_baseline": independent,
            }
        )
        if reserved := sorted(set(spec.seeds()) & set(RESERVED_SEEDS)):
            raise SystemExit(f"{part}: seeds {reserved} are reserved for checks outside the study")
        specs[part] = spec
    return specs


def train(
    spec: SearchSpec, work: Path, *, join: bool, progress: bool, isolate: bool = True
) -> dict[str, Any]:
    started = time.perf_counter()
    counted = {"runs": 0}

    def on_event(kind: str, data: dict[str, Any]) -> None:
        counted["runs"] += kind == "trial.started"

    outcome = run_search(
        spec,
        work,
        resume=True,
        progress=progress,
        isolate=isolate,
        on_event=on_event,
        reconcile=not join,
    )
    return {
        "part": spec.name,
        "status": outcome.status,
        "trained_now": counted["runs"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=(*PARTS, "all"), default=None)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--work", type=Path, default=ROOT / "hssl-data" / "study" / "v2")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "study" / "v2")
    parser.add_argument("--join", action="store_true", help="train beside a live process")
    parser.add_argument("--report", action="store_true", help="write the report afterwards")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    apply_thread_policy()  # the trial processes pick their threads as each run starts
    if args.part is None and not args.report:
        parser.error("say which --part to train, or --report")
    plan = load_plan(args.config)
    specs = part_specs(plan)
    parts = PARTS if args.part == "all" else ((args.part,) if args.part else ())
    for part in parts:  # each run in a child process unless the plan says isolate: false
        done = train(
            specs[part],
            args.work,
            join=args.join,
            progress=not args.no_progress,
            isolate=bool(plan.get("isolate", True)),
        )
        print(json.dumps(done), flush=True)
    if args.report or args.part == "all":
        from study_v2_report import write_report  # bench/ is on the path: a script

        print(json.dumps(write_report(specs, args.work, args.out)))


if __name__ == "__main__":
    sys.exit(main())
