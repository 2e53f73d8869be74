"""The one ``from_dict`` check: a plain dict's keys must be fields of the dataclass it builds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from training.errors import SpecError


def same_config(cls: Any, saved: Any, current: Any) -> bool:
    """Whether a checkpoint's saved config (a plain dict) is ``current``: read back with
    ``cls.from_dict``, so a field the checkpoint predates counts at its default (an upgrade
    that adds a knob does not orphan a run that never set it)."""
    if not isinstance(saved, Mapping):
        return False
    try:
        return cls.from_dict(dict(saved)) == current
    except (SpecError, TypeError, ValueError):
        return False


def known_fields(cls: type, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A copy of ``data`` if every key is a field of dataclass ``cls``, else SpecError naming
    the unknown keys and the allowed ones (``what`` names the thing, e.g. "head spec")."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"unknown {what} field(s) {unknown}; allowed: {sorted(known)}")
    return dict(data)
