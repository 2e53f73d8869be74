"""Which data a run may name, checked without reading it (and without importing torch).

A source is a built-in set (``BUILTIN_SOURCES``) or a class-per-folder tree; the API checks a
search's ``data`` here before it answers (``resolve_source``), :func:`training.data.open_dataset`
opens it later in a worker.
"""

from __future__ import annotations

from pathlib import Path

from training.errors import DataError, first_line

BUILTIN_SOURCES = ("animal-mnist", "digits", "synthetic")


def resolve_source(source: str, root: Path, *, base: Path | None = None) -> str:
    """``source`` checked against the data root ``root`` (already resolved): a built-in name
    as is, else the folder it names as a resolved absolute path (symlinks followed, so a link
    out of the root is refused). A relative path starts at ``base``; without ``base`` the path
    is read the way :func:`open_dataset` reads it (``~`` expanded, from the current directory).
    DataError, naming the source and the root, unless that folder exists inside ``root``."""
    if source in BUILTIN_SOURCES:
        return source
    try:
        path = Path(source) if base is not None else Path(source).expanduser()
        resolved = (path if path.is_absolute() else (base or Path.cwd()) / path).resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        why = "it cannot be resolved"
        raise _unusable(source, f"{why} ({first_line(exc)})", root, why) from None
    if not resolved.is_relative_to(root):
        why = "outside the data root"
        raise _unusable(source, f"it resolves to {resolved}, {why}", root, f"it is {why}")
    try:
        is_dir = resolved.is_dir()
    except (OSError, ValueError):
        is_dir = False
    if not is_dir:
        hint = (
            f"use one of {', '.join(BUILTIN_SOURCES)} or a folder <class name>/<images> under "
            "the data root"
        )
        raise _unusable(
            source,
            f"there is no folder {resolved}; {hint}",
            root,
            f"there is no such folder under the data root; {hint}",
        )
    return str(resolved)


def _unusable(source: str, why: str, root: Path, public_why: str) -> DataError:
    """The full reason (server paths: for the operator's log and a local user) and the one an
    API client is shown (the name it sent, no server path)."""
    return DataError(
        f"data {source!r} cannot be used: {why} (the data root is {root})",
        public=f"data {source!r} cannot be used: {public_why}",
    )
