"""Errors a user can act on.

Every error raised for bad input derives from :class:`HSSLError`; its message says what was
wrong and what would be right, so the CLI prints it as one line and the API as problem+json.
"""

from __future__ import annotations


class HSSLError(Exception):
    """Base class of every actionable error in this project."""


class SpecError(HSSLError, ValueError):
    """A base or head specification that cannot be built (unknown name, bad value)."""


class DataError(HSSLError):
    """A data set that cannot be used; the message names the offending path. ``public`` is
    the same in the caller's own terms (the name it gave, no server path), for an API."""

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public or message


class TrainingError(HSSLError):
    """A trial that could not go on (e.g. a non-finite loss)."""


# ---- an error as one line: the one formatter of every layer (CLI, API, logs, failed trials) ----
def one_line(text: object, limit: int | None = None) -> str:
    """``text`` on one line (each run of whitespace one space; ``"no details"`` if empty), cut
    to ``limit`` characters with an ellipsis."""
    line = " ".join(str(text).split()) or "no details"
    return line if limit is None or len(line) <= limit else line[: limit - 1] + "…"


def exc_line(exc: BaseException, limit: int | None = 500) -> str:
    """``Type: message`` on one line: an error whose type the reader needs (logs, bugs)."""
    return one_line(f"{type(exc).__name__}: {one_line(exc)}", limit)


def first_line(exc: BaseException) -> str:
    """The first line of the error's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
