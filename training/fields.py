"""The one ``from_dict`` check: a plain dict's keys must be fields of the dataclass it builds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from training.errors import SpecError


def known_fields(cls: type, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A copy of ``data`` if every key is a field of dataclass ``cls``, else SpecError naming
    the unknown keys and the allowed ones (``what`` names the thing, e.g. "head spec")."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"unknown {what} field(s) {unknown}; allowed: {sorted(known)}")
    return dict(data)
