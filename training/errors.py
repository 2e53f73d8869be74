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
