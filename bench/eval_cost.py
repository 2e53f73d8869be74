"""What an evaluation costs next to a training epoch, at the head study's scale (issue 21).

Builds one study-scale run (a 4-block width-64 ViT on 28 px Animal-MNIST, 1,600 training
images, batch 32, the proxy recipe, one ConvNeXt head), trains one epoch, then times:

* ``epoch_s``: that training epoch;
* ``eval_s``: one final evaluation (probes and estimators on the held-out set of each size in
  ``--sizes``, 400 = the old study's, 8,000 = study v2's; collapse diagnostics and
  discrepancies on the ``--interim`` subset when the set is larger);
* ``estimators_s``: RankMe + α-ReQ alone on the [CLS] features of the largest set;
* ``run_overhead``: for a 16-epoch run evaluated at initialisation and at the end on the large
  set and at ``--interim-epochs`` on the interim subset, evaluation seconds / training seconds.

Prints ONE JSON line.

    .venv/bin/python bench/eval_cost.py [--threads 2 --sizes 400 2000 8000 --interim 2000]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from training.evaluation.estimators import estimator_metrics
from training.evaluation.evaluate import embed_set
from training.loop.session import build_session
from training.loop.session_eval import evaluate_session
from training.loop.train import train_one_epoch
from training.recipe import TrialConfig
from training.specs import BaseSpec, HeadSpec


def study_config(heldout_images: int | None, interim: int | None) -> TrialConfig:
    return TrialConfig.proxy(
        base=BaseSpec(name="vit_tiny_patch16_224", img_size=28, patch_size=4, depth=4, width=64),
        heads=(HeadSpec(family="convnext", depth=2, kernel=3, first_residual=False),),
        data="animal-mnist",
        data_limit=2000,
        heldout_images=heldout_images,
        interim_eval_images=interim,
        epochs=16,
        batch_size=32,
        device="cpu",
    )


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 2000, 8000])
    parser.add_argument("--interim", type=int, default=2000)
    parser.add_argument("--interim-epochs", type=int, default=4, help="evaluations in between")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    largest = max(args.sizes)
    s = build_session(study_config(largest, args.interim), None)
    epoch_s, _ = timed(lambda: train_one_epoch(s, 0, False, None))
    eval_s = {}
    for size in sorted(args.sizes):
        cfg = study_config(
            None if size == 400 else size, args.interim if size > args.interim else None
        )
        sized = build_session(cfg, None)
        sized.network.load_state_dict(s.network.state_dict())
        sized.teacher.load_state_dict(s.teacher.state_dict())
        eval_s[str(size)], _ = timed(
            lambda s=sized: evaluate_session(s, 1, final=True, linear=True)
        )
    interim_s, _ = timed(lambda: evaluate_session(s, 1, final=False, linear=False))
    kw = dict(img_size=28, batch_size=256, device=torch.device("cpu"))
    features = embed_set(s.teacher, s.heldout_set, **kw).base
    estimators_s, values = timed(lambda: estimator_metrics(features))
    whole = eval_s[str(largest)]
    run_eval = 2 * whole + args.interim_epochs * interim_s
    print(
        json.dumps(
            {
                "threads": args.threads,
                "train_images": len(s.train_set),
                "epoch_s": round(epoch_s, 2),
                "eval_s": {k: round(v, 2) for k, v in eval_s.items()},
                "eval_vs_epoch": {k: round(v / epoch_s, 3) for k, v in eval_s.items()},
                "interim_images": len(s.interim_set),
                "interim_eval_s": round(interim_s, 2),
                "estimators_s": round(estimators_s, 4),
                "estimators_vs_epoch": round(estimators_s / epoch_s, 5),
                "estimators": {k: round(v, 3) for k, v in values.items()},
                "run_overhead": {
                    "epochs": 16,
                    "evaluations": f"init + end on {largest}, {args.interim_epochs} on "
                    f"{len(s.interim_set)}",
                    "eval_s": round(run_eval, 1),
                    "train_s": round(16 * epoch_s, 1),
                    "fraction_of_run": round(run_eval / (run_eval + 16 * epoch_s), 3),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
