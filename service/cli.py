"""The ``hssl`` command line: one entry point for every process and task."""

from __future__ import annotations

import typer

from service import cli_remote  # noqa: F401  (registers the remote search commands)
from service.cli_admin import keys_app, migrate, tenants_app
from service.cli_search import search_app
from service.cli_serve import serve, worker
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
app.command(
    help="Migrate the database: our tables, Optuna's (own schema), procrastinate's (PostgreSQL)."
)(migrate)
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")
app.command(help="Run the HTTP API and its dispatcher (the embedded default runs searches here).")(
    serve
)
app.command(help="Run a PostgreSQL worker (procrastinate); one per GPU, CUDA_VISIBLE_DEVICES.")(
    worker
)
