"""The two bundled real data sets: Animal-MNIST (a PyPI wheel) and scikit-learn's digits.

Both are small grayscale sets held in memory as uint8 N x 3 x S x S tensors. Animal-MNIST ships
as gzip'd pickles; they are read with :class:`RestrictedUnpickler`, which can rebuild numpy
arrays and nothing else, because a pickle can otherwise run arbitrary code on load. The decoded
arrays are cached per process so that repeated opens (one per trial) cost only the resize.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.errors import DataError

# Names from the package's METADATA ("Bear, Bird, Cat, Cow, Dog, Elephant, Giraffe, Horse,
# Sheep, Zebra"); the label order was checked by looking at samples of each label.
ANIMAL_MNIST_CLASSES = (
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
)
DIGITS_CLASSES = tuple(str(d) for d in range(10))
_ANIMAL_FILES = ("animal_data_version_3.gz", "animal_label_version_3.gz")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a numpy-array pickle needs: the array rebuilder, ndarray and dtype."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain numpy arrays and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed_globals().get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed"
            )
        return found


def load_numpy_pickle(path: Path) -> np.ndarray:
    """Load one numpy array from a (possibly gzip'd) pickle with :class:`RestrictedUnpickler`.

    Anything but a non-object ndarray, or a pickle naming another global, raises DataError."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            value = RestrictedUnpickler(f).load()
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError) as e:
        raise DataError(
            f"cannot read {path} as a pickled numpy array ({e}); reinstall the package that "
            "ships it or replace the file"
        ) from e
    if not isinstance(value, np.ndarray) or value.dtype.hasobject:
        raise DataError(f"{path} holds {type(value).__name__}, expected a numeric numpy array")
    return value


def _animal_mnist_dir() -> Path:
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "data set 'animal-mnist' needs the animal_mnist package, which is not installed: "
            "run `pip install --no-deps animal-mnist` (--no-deps: its tensorflow dependency "
            "is not needed)"
        )
    # Locate the package without importing it: its __init__ imports tensorflow.
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"


@functools.lru_cache(maxsize=1)
def animal_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The raw Animal-MNIST images (10000 x 28 x 28 uint8) and labels (int64), read-only."""
    folder = _animal_mnist_dir()
    data_path, label_path = (folder / name for name in _ANIMAL_FILES)
    for p in (data_path, label_path):
        if not p.is_file():
            raise DataError(
                f"Animal-MNIST file {p} is missing; reinstall with "
                "`pip install --force-reinstall --no-deps animal-mnist`"
            )
    images, labels = load_numpy_pickle(data_path), load_numpy_pickle(label_path)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise DataError(
            f"{data_path} / {label_path} hold arrays of shape {images.shape} ({images.dtype}) "
            f"and {labels.shape}; expected N x 28 x 28 uint8 images and N labels"
        )
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= len(ANIMAL_MNIST_CLASSES):
        raise DataError(f"{label_path} has labels outside 0..{len(ANIMAL_MNIST_CLASSES) - 1}")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as uint8 (0..16 scaled to 0..255) and int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError(
            "data set 'digits' needs scikit-learn: run `pip install scikit-learn`"
        ) from e
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def gray_to_rgb_uint8(images: np.ndarray, img_size: int, chunk: int = 2048) -> torch.Tensor:
    """N x H x W grayscale uint8 -> N x 3 x S x S uint8, resized bilinearly with antialiasing
    (in chunks, so that the float copy stays small). Returns a fresh tensor each call."""
    src = torch.from_numpy(np.array(images, dtype=np.uint8))  # a copy: the cache is read-only
    out = torch.empty(len(src), 3, img_size, img_size, dtype=torch.uint8)
    for start in range(0, len(src), chunk):
        x = src[start : start + chunk].unsqueeze(1).float()
        if x.shape[-2:] != (img_size, img_size):
            shrink = img_size < max(x.shape[-2:])  # antialiasing only matters when shrinking
            x = F.interpolate(
                x, size=(img_size, img_size), mode="bilinear", antialias=shrink, align_corners=False
            )
        out[start : start + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


def load_animal_mnist(img_size: int) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Animal-MNIST as (uint8 N x 3 x S x S, int64 labels, class names)."""
    images, labels = animal_mnist_arrays()
    return (
        gray_to_rgb_uint8(images, img_size),
        torch.from_numpy(labels.copy()),
        ANIMAL_MNIST_CLASSES,
    )


def load_digits_set(img_size: int) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """scikit-learn digits as (uint8 N x 3 x S x S, int64 labels, class names)."""
    images, labels = digits_arrays()
    return gray_to_rgb_uint8(images, img_size), torch.from_numpy(labels.copy()), DIGITS_CLASSES
