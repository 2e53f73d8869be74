"""``hssl train``, ``hssl export`` and ``hssl heads``: the training engine from the shell.

Bad input ends in one actionable line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from service.cli.failures import fail_cleanly
from training.errors import HSSLError
from training.recipe import TrialConfig
from training.specs import BaseSpec, HeadSpec

Opt = typer.Option


@fail_cleanly
def train(
    base: Annotated[
        str | None, Opt(help="timm model name of the base, e.g. vit_tiny_patch16_224")
    ] = None,
    head: Annotated[
        list[str] | None,
        Opt(
            help="head spec family[:key=value,...], e.g. "
            "convnext:depth=3,kernel=7; repeat for K heads"
        ),
    ] = None,
    baseline: Annotated[bool, Opt(help="plain iBOT: no auxiliary head")] = False,
    variant: Annotated[str | None, Opt(help="ibot (masked) or dino (no masking)")] = None,
    data: Annotated[
        str | None, Opt(help="animal-mnist, digits, synthetic or an image folder")
    ] = None,
    data_limit: Annotated[int | None, Opt(help="use at most this many images")] = None,
    epochs: Annotated[int | None, Opt()] = None,
    batch_size: Annotated[int | None, Opt(help="per process")] = None,
    lr: Annotated[float | None, Opt(help="learning rate per 256 images")] = None,
    img_size: Annotated[int | None, Opt()] = None,
    patch_size: Annotated[int | None, Opt()] = None,
    depth: Annotated[int | None, Opt(help="base depth override (ViT-style bases)")] = None,
    width: Annotated[int | None, Opt(help="base width override (ViT-style bases)")] = None,
    seed: Annotated[int | None, Opt()] = None,
    device: Annotated[str | None, Opt(help="auto, cpu, cuda, cuda:1 ...")] = None,
    precision: Annotated[str | None, Opt(help="auto, fp32 or bf16")] = None,
    recipe: Annotated[
        str,
        Opt(
            help="proxy (short runs that learn: projector BN, KoLeo, K 256, ...), faithful (the "
            "authors' objective at proxy sizes) or paper (the full ViT-B recipe)"
        ),
    ] = "proxy",
    config: Annotated[
        Path | None, Opt(help="YAML/JSON trial config or recommendation file")
    ] = None,
    out: Annotated[Path | None, Opt(help="run directory (checkpoint; resumed if present)")] = None,
    progress: Annotated[bool, Opt(help="progress bar on stderr")] = True,
) -> None:
    options = {k: v for k, v in locals().items() if k not in ("out", "progress")}
    import torch

    from training.loop.train import run_trial
    from training.runtime.threads import trial_threads

    if (threads := trial_threads()) is not None:  # the user's, or the cores free now
        torch.set_num_threads(threads)
    cfg = build_config(**options)
    out = out or Path("runs") / _run_name(cfg)
    result = run_trial(cfg, echo_epoch, output_dir=out, progress=progress)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        raise typer.Exit(1 if result.status == "failed" else 0)
    typer.echo(json.dumps({"config": cfg.to_dict(), **result.to_dict()}, indent=2))
    if result.status == "failed":
        typer.echo(f"error: trial failed: {result.reason}", err=True)
        raise typer.Exit(1)


def echo_epoch(epoch: int, metrics: dict[str, Any]) -> bool:
    """One line per evaluated epoch on stderr: probes and the collapse diagnostics."""
    if "knn_cls" in metrics:
        parts = [f"epoch {epoch}"]
        if "loss" in metrics:
            parts.append(f"loss {metrics['loss']:.3f}")
        parts.append(f"k-NN [CLS] {metrics['knn_cls']:.3f} patch {metrics['knn_patch']:.3f}")
        if "target_information" in metrics:
            parts.append(
                f"target: information {metrics['target_information']:.3f} nats, entropy "
                f"{metrics['target_entropy']:.2f} of {metrics['ln_k']:.2f}, "
                f"{metrics['collapse']}"
            )
        typer.echo(" · ".join(parts), err=True)
    return False


def build_config(
    *, config: Path | None, recipe: str, baseline: bool, head: list[str] | None, **options: Any
) -> TrialConfig:
    """Start from the file (or the proxy/paper recipe) and apply the flags that were given."""
    if recipe not in ("proxy", "faithful", "paper"):
        raise HSSLError(f"--recipe must be proxy, faithful or paper, got {recipe!r}")
    base_fields = {
        "base": "name",
        "img_size": "img_size",
        "patch_size": "patch_size",
        "depth": "depth",
        "width": "width",
    }
    base_changes = {
        base_fields[k]: options.pop(k) for k in list(base_fields) if options.get(k) is not None
    }
    options = {k: v for k, v in options.items() if v is not None}
    if config:
        start = load_config_file(config)
    else:
        start = TrialConfig.proxy() if recipe == "proxy" else TrialConfig()
    base = BaseSpec.from_dict({**start.base.to_dict(), **base_changes})
    heads = start.heads
    if head:
        heads = tuple(HeadSpec.parse(text) for text in head)
    if baseline:
        if head:
            raise HSSLError("--baseline trains without a head; drop --head or --baseline")
        heads = ()
    if recipe == "paper":
        start = TrialConfig.paper(base, heads, epochs=options.pop("epochs", 100))
    return TrialConfig.from_dict({**start.to_dict(), "base": base, "heads": heads, **options})


def load_config_file(path: Path) -> TrialConfig:
    """A trial config (YAML/JSON), or a recommendation file carrying one under ``trial_config``."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise HSSLError(
            f"{path} does not hold a mapping; expected a trial config or recommendation"
        )
    data = data.get("trial_config", data)
    return TrialConfig.from_dict(data)


def _run_name(cfg: TrialConfig) -> str:
    heads = "+".join(h.label() for h in cfg.heads) or "baseline"
    return f"{cfg.base.name}-{heads}-{cfg.variant}-s{cfg.seed}"


@fail_cleanly
def export(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint.pt written by hssl train")],
    out: Annotated[Path, Opt(help="safetensors file to write")] = Path("base.safetensors"),
) -> None:
    from training.runtime.export import export_base

    typer.echo(json.dumps(export_base(checkpoint, out), indent=2))


def heads() -> None:
    from training.model.heads import list_heads

    json.dump(list_heads(), sys.stdout, indent=2)
    sys.stdout.write("\n")
