"""A run's per-epoch log: ``log.jsonl`` in its folder, one JSON object per line, as DINO's
``log.txt`` (and ``finetune.jsonl`` of a fine-tune).

Line ``epoch: 0`` holds the measurements at initialisation (the floor), when they were taken;
line ``epoch: e`` the record of epoch ``e`` as the run's history keeps it (loss terms, lr, weight
decay, teacher temperature, and the probes and collapse diagnostics when the epoch was
evaluated) plus the fields in :data:`TIMING_FIELDS`, which only the log keeps.

The log never holds an epoch the checkpoint does not: when a run starts, :func:`restart` cuts it
back to the checkpoint's records (none for a fresh run), so a resumed run's log equals an
uninterrupted one's up to the timing fields. Lines of checkpointed epochs keep their timing; a
missing one is rewritten from the checkpoint's record, without timing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FILENAME = "log.jsonl"
# measured, so they differ between two runs (phase_s: seconds per phase, training.runtime.phases)
TIMING_FIELDS = ("images_per_s", "epoch_time_s", "phase_s")


def append(path: Path, line: dict[str, Any]) -> None:
    """Append one object as a JSON line (numpy scalars as floats)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(line, default=float) + "\n")


def restart(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Rewrite the log to hold one line per record, in order: the line already logged for that
    record's epoch if there is one (it has the timing), else the record itself."""
    logged = {}
    for line in read(path):
        logged.setdefault(line.get("epoch"), line)
    kept = [logged.get(record["epoch"], record) for record in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line, default=float) + "\n" for line in kept))


def read(path: Path) -> list[dict[str, Any]]:
    """The log's objects in order; a torn last line (a run killed mid-write) is skipped."""
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines
