"""``hssl search run`` and ``hssl search calibrate``: a whole search (or a proxy-recipe
calibration) on the embedded default (SQLite, child processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError

from service.cli.failures import fail_cleanly
from training.errors import HSSLError

Opt = typer.Option
search_app = typer.Typer(help="Search for the best auxiliary head.", no_args_is_help=True)


def spec_error(exc: ValidationError) -> HSSLError:
    """All of pydantic's complaints on one line: 'field.path: message; ...'."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return HSSLError("invalid search spec: " + "; ".join(parts))


def check_data(source: str) -> None:
    """Refuse a data folder every run would fail on (DataError naming it) before any runs."""
    from training.data.folder import scan_folder
    from training.sources import BUILTIN_SOURCES

    if source not in BUILTIN_SOURCES:
        scan_folder(source)


def load_spec(path: Path | None, overrides: dict[str, Any]):
    """The spec file (YAML/JSON) with the given flags applied on top."""
    from search.spec import SearchSpec

    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            problem = getattr(exc, "problem", None) or "it does not parse"
            raise HSSLError(f"{path} is not valid YAML{at}: {problem}") from None
        if not isinstance(loaded, dict):
            raise HSSLError(f"{path} does not hold a mapping; expected a search spec")
        data = loaded
    for dotted, value in overrides.items():
        if value is None or value == []:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return SearchSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_error(exc) from None


@search_app.command("run", help="Run a whole search locally (SQLite, child processes) and rank.")
@fail_cleanly
def run(
    spec_file: Annotated[Path | None, typer.Argument(help="search spec (YAML or JSON)")] = None,
    base: Annotated[str | None, Opt(help="timm model name of the base")] = None,
    data: Annotated[str | None, Opt(help="animal-mnist, digits, synthetic or a folder")] = None,
    strategy: Annotated[str | None, Opt(help="joint, independent, optuna or calibrate")] = None,
    head: Annotated[list[str] | None, Opt(help="explicit candidate, e.g. convnext:depth=3")] = None,
    family: Annotated[list[str] | None, Opt(help="candidate family (repeat)")] = None,
    epochs: Annotated[int | None, Opt(help="epochs per proxy run")] = None,
    seeds: Annotated[int | None, Opt(help="paired seeds per candidate")] = None,
    trials: Annotated[int | None, Opt(help="trials of the optuna/calibrate strategy")] = None,
    data_limit: Annotated[int | None, Opt(help="use at most this many images")] = None,
    prescreen: Annotated[int | None, Opt(help="keep the top N by initial discrepancy")] = None,
    baseline: Annotated[
        bool | None, Opt("--baseline/--no-baseline", help="run plain iBOT too")
    ] = None,
    name: Annotated[str | None, Opt(help="study name")] = None,
    data_dir: Annotated[Path, Opt(help="where the SQLite storage and outputs go")] = Path(
        "hssl-data"
    ),
    resume: Annotated[bool, Opt(help="continue an interrupted search of the same spec")] = False,
    isolate: Annotated[bool, Opt(help="train each trial in a child process")] = True,
    progress: Annotated[bool, Opt(help="progress bar on stderr")] = True,
) -> None:
    import optuna

    from search.run import run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    spec = load_spec(
        spec_file,
        {
            "base.name": base,
            "data": data,
            "strategy": strategy,
            "space.heads": head,
            "space.families": family,
            "budget.epochs": epochs,
            "budget.seeds": seeds,
            "budget.trials": trials,
            "budget.data_limit": data_limit,
            "budget.prescreen_keep": prescreen,
            "include_baseline": baseline,
            "name": name,
        },
    )
    check_data(spec.data)  # a missing or malformed folder: one line now, not N failed runs
    outcome = run_search(spec, data_dir, resume=resume, progress=progress, isolate=isolate)
    typer.echo(outcome.table)
    typer.echo(f"\nsearch {outcome.study}: {outcome.status}")
    for kind, path in outcome.files.items():
        typer.echo(f"{kind}: {path}")
    artifacts = Path(data_dir) / "artifacts"
    typer.echo(f"dashboard: optuna-dashboard {outcome.storage} --artifact-dir {artifacts}")
    if "json" not in outcome.files:
        typer.echo("error: no candidate completed a run, so there is no recommendation", err=True)
        raise typer.Exit(1)


@search_app.command(
    "calibrate",
    help="Tune the proxy recipe on the baseline (Optuna over lr, momentum, temperatures, "
    "projector BN, targets, KoLeo, out_dim) and write the best as trial_overrides.",
)
@fail_cleanly
def calibrate(
    spec_file: Annotated[Path, typer.Argument(help="search spec (YAML/JSON): base, data, budget")],
    trials: Annotated[int | None, Opt(help="calibration trials (default: budget.trials)")] = None,
    probe: Annotated[
        str | None, Opt(help="knn or linear: whose gain over its floor per minute counts")
    ] = None,
    out: Annotated[Path, Opt(help="YAML file for the best recipe")] = Path("recipe.yaml"),
    data_dir: Annotated[Path, Opt(help="where the SQLite storage and outputs go")] = Path(
        "hssl-data"
    ),
    resume: Annotated[bool, Opt(help="continue an interrupted calibration")] = False,
    isolate: Annotated[bool, Opt(help="train each trial in a child process")] = True,
    progress: Annotated[bool, Opt(help="progress bar on stderr")] = True,
) -> None:
    import optuna

    from search.calibrate_report import write_recipe
    from search.run import run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = calibration_spec(spec_file, trials, probe)
    check_data(spec.data)  # a missing or malformed folder: one line now, not N failed runs
    outcome = run_search(spec, data_dir, resume=resume, progress=progress, isolate=isolate)
    typer.echo(outcome.table)
    typer.echo(f"\ncalibration {outcome.study}: {outcome.status}")
    artifacts = Path(data_dir) / "artifacts"
    typer.echo(f"dashboard: optuna-dashboard {outcome.storage} --artifact-dir {artifacts}")
    recipe = outcome.ranking.get("trial_overrides")
    if recipe is None:
        typer.echo("error: no trial ran without failing or collapsing (reasons above)", err=True)
        raise typer.Exit(1)
    path = write_recipe(recipe, out)
    typer.echo(f"\nbest recipe, written to {path} (paste under a search spec's top level):")
    typer.echo(path.read_text().rstrip())


def calibration_spec(path: Path, trials: int | None, probe: str | None):
    """The spec file as a calibration: strategy ``calibrate``, the probe (``--probe``, else
    the file's own if it is a calibration spec, else k-NN) and its own study name, so the
    head search of the same file can later run under the file's name."""
    from search.spec import PROBE_OBJECTIVES
    from search.strategies.calibrate import Calibrate

    if probe is not None and probe not in PROBE_OBJECTIVES:
        raise HSSLError(f"--probe must be one of {list(PROBE_OBJECTIVES)}, got {probe!r}")
    plain = load_spec(path, {})
    if probe is None:
        probe = plain.objectives[0] if plain.strategy == Calibrate.name else "knn"
    overrides = {"strategy": Calibrate.name, "objectives": [probe], "budget.trials": trials}
    spec = load_spec(path, overrides)
    if spec.name and plain.strategy != Calibrate.name:
        spec = spec.model_copy(update={"name": f"{spec.name[:70]}-calibrate"})
    return spec
