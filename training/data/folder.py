"""A user's image folder laid out as ``root/<class>/<image files>``.

The scan only lists files (it never opens them, so a corrupt image cannot break it); images are
decoded lazily, one at a time, by :func:`decode_image`. Nothing outside ``root`` is ever read:
every image path is resolved (symlinks followed) and refused if it lands outside the resolved
root, both at scan time and again at decode time. Images are made square the way evaluation
crops usually are: resize the shorter side to ``img_size`` and take the centre, which keeps the
aspect ratio instead of squashing the picture.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from training.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
_TREE = "<root>/<class name>/<image files>"
_LAYOUT = f"expected {_TREE}"


def _skipped(name: str) -> bool:
    """Hidden entries and tool droppings such as __MACOSX are not classes or images."""
    return name.startswith(".") or name.startswith("__")


def _inside(path: Path, root: Path) -> Path:
    """``path`` resolved, or DataError if it resolves outside ``root`` (already resolved)."""
    real = path.resolve()
    if not real.is_relative_to(root):
        raise DataError(
            f"{path} resolves to {real}, outside the data folder {root}; only files inside the "
            "folder are read: copy the file in or remove the link"
        )
    return real


def _class_images(folder: Path, root: Path) -> list[Path]:
    """Image files under one class folder (recursively, links to directories not followed)."""

    def fail(err: OSError) -> None:
        raise DataError(f"cannot list {err.filename}: {err.strerror}; make it readable")

    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=fail):
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
        for name in sorted(filenames):
            if _skipped(name) or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            path = Path(dirpath) / name
            if not _inside(path, root).is_file():
                raise DataError(f"{path} is not a readable file (broken link?); remove it")
            found.append(path)
    return found


def scan_folder(
    source: str | os.PathLike[str],
) -> tuple[Path, list[Path], list[int], tuple[str, ...]]:
    """List a class-per-sub-folder image set: (resolved root, files, labels, class names).

    Classes are the sub-folder names in sorted order. Raises DataError, naming the path, when
    the folder is missing, not a directory, has no class folders or no images, has a class
    folder without images, or has only one class (the probes need at least two).
    """
    given = Path(source).expanduser()
    if not given.exists():
        raise DataError(
            f"data folder {given} does not exist; pass a folder laid out as {_TREE} "
            "or a built-in data set name"
        )
    if not given.is_dir():
        raise DataError(f"{given} is not a directory; {_LAYOUT}")
    root = given.resolve()
    try:
        entries = sorted(e for e in root.iterdir() if not _skipped(e.name))
    except OSError as e:
        raise DataError(f"cannot list data folder {given}: {e}; make it readable") from e
    class_dirs = [e for e in entries if e.is_dir()]
    if not class_dirs:
        raise DataError(f"no class sub-folders in {given}; {_LAYOUT}")
    files: list[Path] = []
    labels: list[int] = []
    empty: list[Path] = []
    for label, folder in enumerate(class_dirs):
        found = _class_images(_inside(folder, root), root)
        if not found:
            empty.append(folder)
        files.extend(found)
        labels.extend([label] * len(found))
    exts = ", ".join(sorted(IMAGE_EXTENSIONS))
    if not files:
        raise DataError(f"no images ({exts}) found in {given}; {_LAYOUT}")
    if empty:
        raise DataError(
            f"class folder {empty[0]} holds no images ({exts}); add images or remove the folder"
        )
    if len(class_dirs) < 2:
        raise DataError(
            f"only one class ({class_dirs[0].name!r}) in {given}; the probes need at least 2 "
            f"classes: add another sub-folder of images ({_LAYOUT})"
        )
    return root, files, labels, tuple(d.name for d in class_dirs)


def decode_image(path: Path, img_size: int, root: Path) -> torch.Tensor:
    """Decode one image file to uint8 3 x S x S: RGB, shorter side resized to ``img_size``
    (bilinear, antialiased by PIL) and centre-cropped. DataError names the file if it is
    corrupt, unreadable, or (since the scan) has become a link outside ``root``."""
    real = _inside(path, root)
    try:
        with Image.open(real) as im:
            im.draft("RGB", (img_size, img_size))  # JPEG: decode at a reduced scale, cheaply
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            rgb = im.convert("RGB")
        rgb = ImageOps.fit(rgb, (img_size, img_size), method=Image.Resampling.BILINEAR)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode image {path}: {e}; replace or remove the file") from e
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()
