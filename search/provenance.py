"""Provenance of a recommendation: the data's fingerprint, library versions, the git commit."""

from __future__ import annotations

import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

from training.data import open_dataset

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def data_fingerprint(source: str, img_size: int) -> dict[str, object]:
    """sha256 over the labelled images (in-memory sets) or over relative paths and sizes
    (folders: cheap, and it changes when a file is added, removed or rewritten)."""
    train, heldout = open_dataset(source, img_size, heldout=1)
    digest = hashlib.sha256()
    for part in (train, heldout):
        digest.update(part.labels.numpy().tobytes())
        if part.in_memory:
            digest.update(part.images.numpy().tobytes())
        else:
            for path in part.files:
                digest.update(str(path.relative_to(part.root)).encode())
                digest.update(str(path.stat().st_size).encode())
    return {
        "source": source,
        "images": len(train) + len(heldout),
        "classes": len(train.classes),
        "sha256": digest.hexdigest(),
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for package in ("torch", "timm", "optuna", "hssl-search"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    out["git_commit"] = git_commit()
    return out


def git_commit() -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None
