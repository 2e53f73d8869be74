"""The one JSON sanitiser: any result, ranking, event or trial row as strict JSON data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def plain_json(value: Any) -> Any:
    """A strict-JSON copy (PostgreSQL's json type and ``allow_nan=False`` refuse NaN): non-finite
    floats become None, NumPy scalars Python ones, tuples lists, mapping keys strings, and any
    other object its string."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)
