"""``hssl finetune``: supervised fine-tuning of a pre-trained base (or training from scratch).

The init and the model name are checked before anything is built, so a bad path or an unknown
model is one ``error:`` line (exit code 2); a run that fails later (unusable data, a non-finite
loss, out of memory) ends in ``error: fine-tune failed: ...`` (exit code 1). One line per epoch
on stderr; the result as JSON on stdout (rank 0 only under torchrun).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli.failures import fail_cleanly
from training.errors import one_line

Opt = typer.Option
NONE = ("none", "")


@fail_cleanly
def finetune(
    init: Annotated[
        str,
        Opt(
            help="pre-trained base: an `hssl export` .safetensors file, a run folder of "
            "`hssl train`, a timm checkpoint, or none (supervised training from scratch)"
        ),
    ],
    recipe: Annotated[
        str, Opt(help="mae (MAE's ViT-B/16 recipe, as the paper) or proxy (small, CPU-sized)")
    ] = "proxy",
    model: Annotated[
        str | None, Opt(help="timm model name (default: the one the init was pre-trained as)")
    ] = None,
    data: Annotated[
        str | None, Opt(help="animal-mnist, digits, synthetic or an image folder")
    ] = None,
    val_data: Annotated[
        str | None, Opt(help="evaluate on this folder (same classes) instead of a held-out split")
    ] = None,
    data_limit: Annotated[int | None, Opt(help="use at most this many training images")] = None,
    img_size: Annotated[int | None, Opt(help="default: the init's, else the recipe's")] = None,
    patch_size: Annotated[
        int | None, Opt(help="model override (no init or timm checkpoint)")
    ] = None,
    depth: Annotated[int | None, Opt(help="model override (no init or timm checkpoint)")] = None,
    width: Annotated[int | None, Opt(help="model override (no init or timm checkpoint)")] = None,
    epochs: Annotated[int | None, Opt()] = None,
    batch_size: Annotated[int | None, Opt(help="per process and step")] = None,
    effective_batch: Annotated[
        int | None, Opt(help="reached by gradient accumulation; scales the lr")
    ] = None,
    lr: Annotated[float | None, Opt(help="learning rate per 256 images")] = None,
    min_lr: Annotated[float | None, Opt()] = None,
    warmup_epochs: Annotated[int | None, Opt()] = None,
    weight_decay: Annotated[float | None, Opt()] = None,
    layer_decay: Annotated[float | None, Opt(help="layer-wise lr decay (1 = none)")] = None,
    drop_path: Annotated[float | None, Opt()] = None,
    mixup: Annotated[float | None, Opt(help="Mixup alpha (0 = off)")] = None,
    cutmix: Annotated[float | None, Opt(help="CutMix alpha (0 = off)")] = None,
    smoothing: Annotated[float | None, Opt(help="label smoothing")] = None,
    auto_augment: Annotated[
        str | None, Opt(help="timm RandAugment spec, e.g. rand-m9-mstd0.5-inc1, or none")
    ] = None,
    re_prob: Annotated[float | None, Opt(help="random erasing probability")] = None,
    ema_decay: Annotated[float | None, Opt(help="model EMA decay (default off)")] = None,
    clip_grad: Annotated[float | None, Opt(help="gradient norm clipping (default off)")] = None,
    seed: Annotated[int | None, Opt()] = None,
    device: Annotated[str | None, Opt(help="auto, cpu, cuda, cuda:1 ...")] = None,
    precision: Annotated[str | None, Opt(help="auto (bf16 on CUDA), fp32 or bf16")] = None,
    num_workers: Annotated[int | None, Opt(help="data loader processes")] = None,
    out: Annotated[Path | None, Opt(help="run folder (finetune.pt, finetune.jsonl)")] = None,
    resume: Annotated[bool, Opt(help="continue the checkpoint in --out if there is one")] = False,
    progress: Annotated[bool, Opt(help="progress bar on stderr")] = True,
) -> None:
    options = {
        k: v for k, v in locals().items() if k not in ("recipe", "out", "resume", "progress")
    }
    from training.finetune import FinetuneConfig
    from training.finetune.resolve import preflight

    no_augment = auto_augment is not None and auto_augment.strip().lower() in NONE
    options["init"] = None if init.strip().lower() in NONE else init
    options["auto_augment"] = None if no_augment else auto_augment
    config = FinetuneConfig.from_recipe(recipe, **options)  # None = the recipe's value
    if no_augment:
        config = config.with_(auto_augment=None)
    preflight(config)
    from training.finetune import run_finetune

    out = out or Path("runs") / f"finetune-{_init_label(config.init)}-s{config.seed}"
    result = run_finetune(config, out, report=echo_epoch, resume=resume, progress=progress)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        raise typer.Exit(1 if result.status == "failed" else 0)
    if result.status != "failed" or result.epochs_done:  # nothing to show if nothing ran
        typer.echo(json.dumps({"config": config.to_dict(), **result.to_dict()}, indent=2))
    if result.status == "failed":
        typer.echo(f"error: fine-tune failed: {one_line(result.reason)}", err=True)
        raise typer.Exit(1)


def _init_label(init: str | None) -> str:
    if init is None:
        return "scratch"
    path = Path(init).expanduser().resolve()
    return path.parent.name if path.name == "checkpoint.pt" else path.stem


def echo_epoch(epoch: int, record: dict[str, Any]) -> bool:
    """One line per epoch on stderr."""
    parts = [
        f"epoch {epoch}",
        f"loss {record['loss']:.3f}",
        f"top-1 {record['top1']:.3f}",
        f"top-5 {record['top5']:.3f}",
    ]
    if "top1_ema" in record:
        parts.append(f"EMA top-1 {record['top1_ema']:.3f}")
    typer.echo(" · ".join(parts), err=True)
    return False
