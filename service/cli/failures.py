"""Every CLI failure is one line: the decorator all ``hssl`` commands wear."""

from __future__ import annotations

import functools
import json
import os

import typer
import yaml

from service.errors import Problem
from training.errors import HSSLError, exc_line, one_line


def fail_cleanly(func):
    """Every failure is one line on stderr, never a traceback: our errors (and a bad file)
    as ``error: <message>``, exit code 2; anything else (a bug, a library's surprise) as
    ``error: <Type>: <message>``, exit code 1, with ``HSSL_DEBUG=1`` to see its traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (HSSLError, Problem, OSError, yaml.YAMLError, json.JSONDecodeError) as exc:
            typer.echo(f"error: {one_line(exc)}", err=True)
            raise typer.Exit(2) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            if os.environ.get("HSSL_DEBUG") == "1":
                raise
            text = exc_line(exc, limit=None)
            typer.echo(f"error: {text} (HSSL_DEBUG=1 shows where)", err=True)
            raise typer.Exit(1) from None

    return wrapper
