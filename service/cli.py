"""The ``hssl`` command line: one entry point for every process and task."""

from __future__ import annotations

import typer

from service import cli_remote  # noqa: F401  (registers the remote search commands)
from service.cli_search import search_app
from service.cli_train import export, heads, train

app = typer.Typer(
    help="hssl-search: find and use the best auxiliary head for HSSL pre-training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command(help="Run HSSL (or plain-iBOT) pre-training and print its metrics as JSON.")(train)
app.command(help="Export a run's pre-trained base as timm-loadable safetensors.")(export)
app.command(help="List the auxiliary head families and their options.")(heads)
app.add_typer(search_app, name="search")
