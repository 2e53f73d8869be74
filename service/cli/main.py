"""The ``hssl`` command line: one entry point for every process and task."""

from __future__ import annotations

import typer

from service.cli import remote as cli_remote  # noqa: F401  (registers the remote search commands)
from service.cli.admin import keys_app, migrate, tenants_app
from service.cli.finetune import finetune
from service.cli.search import search_app
from service.cli.serve import serve, worker
from service.cli.train import export, heads, train
from training.errors import one_line

app = typer.Typer(
    help="hssl-search: find and use the best auxiliary head for HSSL pre-training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command(help="Run HSSL (or plain-iBOT) pre-training and print its metrics as JSON.")(train)
app.command(help="Export a run's pre-trained base as timm-loadable safetensors.")(export)
app.command(
    help="Fine-tune a pre-trained base (an export, a run folder, a timm checkpoint or none) "
    "with timm's parts and print its top-1/top-5 as JSON."
)(finetune)
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


def main() -> None:
    """The console script: ``app`` with every usage error as one line (``error: ...``, exit
    code 2) instead of a usage box; the commands' own failures are one line already
    (``service.cli.failures.fail_cleanly``). ``hssl`` or a group alone still prints its help."""
    import sys

    from training.runtime.threads import apply_thread_policy

    apply_thread_policy()  # before torch loads: bounded OpenMP spin, threads chosen per run
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # typer's (vendored click) usage errors
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            sys.exit(0)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        typer.echo(f"error: {one_line(message)}{hint}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
