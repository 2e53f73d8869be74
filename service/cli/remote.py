"""``hssl search submit|status|watch|download|cancel|list``: the REST API from the shell.

The server and key come from ``--url``/``HSSL_URL`` (default http://127.0.0.1:8000) and
``--key``/``HSSL_API_KEY``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from tqdm import tqdm

from search.evidence import card_lines
from search.objectives import metric_of
from search.strategy import stage_line
from service.cli.client import Client
from service.cli.failures import fail_cleanly
from service.cli.search import search_app
from training.errors import HSSLError

Url = Annotated[str, typer.Option(envvar="HSSL_URL", help="API base URL")]
Key = Annotated[str | None, typer.Option(envvar="HSSL_API_KEY", help="API key (Bearer)")]
DEFAULT_URL = "http://127.0.0.1:8000"


def read_spec(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise HSSLError(f"{path} does not hold a mapping; expected a search spec")
    return data


def summary(search: dict[str, Any]) -> str:
    p = search.get("progress", {})
    running = f"running {p['running']} / " if p.get("running") is not None else ""
    line = (
        f"{search['id']}  {search['status']:<10}  {running}finished {p.get('finished', 0)}"
        f" / planned {p.get('planned', 0)} runs ({p.get('failed', 0)} failed)"
        f"  {search.get('name', '')}"
    )
    return line + (f"\n  error: {search['error']}" if search.get("error") else "")


def ranking_lines(ranking: dict[str, Any]) -> list[str]:
    """The ranking JSON as a compact table; accuracy always with spread, floor and (when the
    server measured it) its sampling SE."""
    objectives = ranking.get("objectives", [])
    lines = [f"{'rank':<5}{'head':<28}" + "".join(f"{o:<16}" for o in objectives) + "k-NN (floor)"]
    for row in ranking.get("heads", []):
        mean, sd = row.get("mean", {}), row.get("sd", {})
        cells = "".join(f"{_pm(mean.get(_metric(o)), sd.get(_metric(o))):<16}" for o in objectives)
        floor = (row.get("floor") or {}).get("knn_cls")
        knn = _pm(mean.get("knn_cls"), sd.get("knn_cls"))
        se = (row.get("se") or {}).get("knn_cls")
        sampling = f"se {_fmt(se)}, " if se is not None else ""
        rank = row.get("rank") or "-"
        lines.append(f"{rank!s:<5}{row['label']:<28}{cells}{knn} ({sampling}floor {_fmt(floor)})")
    signal = (ranking.get("signal") or {}).get("line")
    if signal:  # whether the probes say anything beyond discrepancy
        lines.append(signal)
    decision = (ranking.get("decision") or {}).get("line")
    if decision:  # a staged search's verdict
        lines.append(f"decision: {decision}")
    if ranking.get("evidence"):  # which metric ranked, how far it can be trusted, and why
        lines.extend(card_lines(ranking["evidence"]))
    return lines


def _metric(objective: str) -> str:
    try:
        return metric_of(objective)
    except ValueError:  # a newer server's objective: show it under its own name
        return objective


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _pm(mean: float | None, sd: float | None) -> str:
    return "n/a" if mean is None else f"{mean:.3f}±{0.0 if sd is None else sd:.3f}"


@search_app.command("submit", help="Submit a search spec to the service (202 + its id).")
@fail_cleanly
def submit(
    spec_file: Annotated[Path, typer.Argument(help="search spec (YAML or JSON)")],
    url: Url = DEFAULT_URL,
    key: Key = None,
    idempotency_key: Annotated[str | None, typer.Option(help="retry-safe submission key")] = None,
    watch_it: Annotated[bool, typer.Option("--watch", help="follow it to the end")] = False,
    download_to: Annotated[
        Path | None, typer.Option("--download", help="after --watch, save the recommendation")
    ] = None,
) -> None:
    client = Client(url, key)
    search = client.submit(read_spec(spec_file), idempotency_key or str(uuid.uuid4()))
    typer.echo(summary(search))
    if watch_it or download_to:
        follow(client, search["id"])
    if download_to:
        fmt = "json" if download_to.suffix == ".json" else "yaml"
        download_to.write_bytes(client.recommendation(search["id"], fmt))
        typer.echo(f"recommendation: {download_to}")


@search_app.command("status", help="Show one search.")
@fail_cleanly
def status(search_id: str, url: Url = DEFAULT_URL, key: Key = None) -> None:
    typer.echo(summary(Client(url, key).get(search_id)))


@search_app.command("list", help="List your searches, newest first.")
@fail_cleanly
def list_(
    url: Url = DEFAULT_URL,
    key: Key = None,
    status_filter: Annotated[str | None, typer.Option("--status")] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 50,
) -> None:
    for i, search in enumerate(Client(url, key).list(status_filter, min(limit, 100))):
        if i >= limit:
            break
        typer.echo(summary(search))


@search_app.command("watch", help="Follow a search's events with a progress bar, then rank.")
@fail_cleanly
def watch(search_id: str, url: Url = DEFAULT_URL, key: Key = None) -> None:
    follow(Client(url, key), search_id)


def follow(client: Client, search_id: str) -> None:
    search = client.get(search_id)
    bar = tqdm(
        total=search["progress"]["planned"] or None,
        desc=search_id[:8],
        unit="run",
        dynamic_ncols=True,
    )
    bar.update(search["progress"]["finished"])
    final = search["status"]
    for event in client.events(search_id):
        if event.kind == "trial.finished" and event.data.get("number") is not None:
            bar.update(1)
            bar.set_postfix_str(f"{event.data.get('label')}: {event.data.get('state')}")
        elif event.kind == "trial.progress":
            d = event.data
            bar.set_postfix_str(
                f"{d.get('run')} epoch {d.get('epoch')}/{d.get('epochs')} step "
                f"{d.get('step')}/{d.get('steps')} · {d.get('images_per_s', 0):.0f} img/s"
            )
        elif event.kind == "trial.reported":
            bar.set_postfix_str(f"{event.data.get('run')} epoch {event.data.get('epoch')}")
        elif event.kind == "search.stage":
            bar.write(stage_line(event.data))
        elif event.kind.startswith("search."):
            final = event.kind.removeprefix("search.")
    bar.close()
    typer.echo(summary(client.get(search_id)))
    if final == "completed":
        typer.echo("\n".join(ranking_lines(client.ranking(search_id))))
    elif final == "failed":
        raise typer.Exit(1)


@search_app.command("download", help="Download the recommendation (JSON or YAML).")
@fail_cleanly
def download(
    search_id: str,
    url: Url = DEFAULT_URL,
    key: Key = None,
    fmt: Annotated[str, typer.Option("--format", help="json or yaml")] = "yaml",
    out: Annotated[Path | None, typer.Option(help="file to write")] = None,
) -> None:
    if fmt not in ("json", "yaml"):
        raise HSSLError(f"--format must be json or yaml, got {fmt!r}")
    body = Client(url, key).recommendation(search_id, fmt)
    path = out or Path(f"recommendation.{fmt}")
    path.write_bytes(body)
    head = (json.loads(body) if fmt == "json" else yaml.safe_load(body)).get("head_label")
    typer.echo(f"{path}: recommended head {head}")


@search_app.command("cancel", help="Cancel a search (running trials stop within an epoch).")
@fail_cleanly
def cancel(search_id: str, url: Url = DEFAULT_URL, key: Key = None) -> None:
    typer.echo(summary(Client(url, key).cancel(search_id)))
