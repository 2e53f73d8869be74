"""The data layer: labelled image sets, deterministic sharded batches, batched augmentation.

``open_dataset`` names a source (a bundled set, a generated one, or a class-per-folder tree)
and returns a seeded (train, heldout) split; ``iterate_batches`` walks a set in uint8 batches;
``TwoCropAugment`` turns a batch into the two training views on the batch's own device, and
``eval_view`` into the fixed view the probes use.
"""

from training.data.augment import IMAGENET_MEAN, IMAGENET_STD, TwoCropAugment, eval_view
from training.data.datasets import BUILTIN_SOURCES, ImageSet, open_dataset, stratified_subset
from training.data.folder import IMAGE_EXTENSIONS
from training.data.loader import iterate_batches, num_batches

__all__ = [
    "BUILTIN_SOURCES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageSet",
    "TwoCropAugment",
    "eval_view",
    "iterate_batches",
    "num_batches",
    "open_dataset",
    "stratified_subset",
]
