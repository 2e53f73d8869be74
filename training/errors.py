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
    """A data set that cannot be used; the message names the offending path."""


class TrainingError(HSSLError):
    """A trial that could not go on (e.g. a non-finite loss)."""
