"""Data sources, splits, folder errors, the restricted unpickler and batch iteration."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import ImageSet, builtin, iterate_batches, num_batches, open_dataset
from training.data.builtin import load_numpy_pickle
from training.errors import DataError, HSSLError


def _ids(*sets: ImageSet) -> list[int]:
    return sorted(i for s in sets for i in s.ids.tolist())


# --- built-in sources -------------------------------------------------------------------------


def test_animal_mnist_loads_all_images_and_classes():
    train, held = open_dataset("animal-mnist", 32, seed=0, heldout=0.2)
    assert len(train) + len(held) == 10_000
    assert (len(train), len(held)) == (8_000, 2_000)
    assert len(train.classes) == 10 and train.classes == held.classes
    assert train.classes[0] == "bear" and train.classes[-1] == "zebra"
    assert train.images.dtype == torch.uint8 and train.images.shape == (8_000, 3, 32, 32)
    assert train.labels.dtype == torch.int64
    image, label = train[0]
    assert image.shape == (3, 32, 32) and isinstance(label, int)
    # Grayscale source: three equal channels, and real content (not a blank image).
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert int(train.images.max()) > 200
    # Stratified: every class has exactly 200 held-out images.
    assert torch.bincount(held.labels, minlength=10).tolist() == [200] * 10


def test_split_is_disjoint_complete_and_deterministic():
    train, held = open_dataset("animal-mnist", 16, seed=3, heldout=0.2)
    assert not set(train.ids.tolist()) & set(held.ids.tolist())
    assert _ids(train, held) == list(range(10_000))
    train2, held2 = open_dataset("animal-mnist", 16, seed=3, heldout=0.2)
    assert torch.equal(held.ids, held2.ids) and torch.equal(train.images, train2.images)
    _, held_other = open_dataset("animal-mnist", 16, seed=4, heldout=0.2)
    assert not torch.equal(held.ids, held_other.ids)
    # The images follow their ids: the held-out image equals the same id in a full open.
    full, _ = open_dataset("animal-mnist", 16, heldout=0)
    assert torch.equal(full.images[held.ids[:50]], held.images[:50])


def test_limit_and_heldout_count():
    train, held = open_dataset("animal-mnist", 16, seed=1, heldout=100, limit=500)
    assert len(held) == 100 and len(train) == 400
    assert torch.bincount(torch.cat([train.labels, held.labels])).tolist() == [50] * 10
    with pytest.raises(DataError, match="heldout"):
        open_dataset("synthetic", 16, heldout=1.5)
    with pytest.raises(DataError, match="no training images"):
        open_dataset("synthetic", 16, heldout=1000)


def test_heldout_images_sets_the_evaluation_apart_from_the_training_size():
    # issue 21: the study's split, 1,600 training images of a 2,000 limit, evaluated on 8,000
    train, held = open_dataset("animal-mnist", 16, seed=7, heldout=0.2, limit=2000)
    train8, held8 = open_dataset("animal-mnist", 16, seed=7, limit=2000, heldout_images=8000)
    assert torch.equal(train.ids, train8.ids)  # the training set is exactly the same
    assert len(held8) == 8000 and not set(train8.ids.tolist()) & set(held8.ids.tolist())
    assert len(set(held8.ids.tolist()) - set(held.ids.tolist())) >= 7600  # beyond the limit
    assert torch.bincount(held8.labels).tolist() == [800] * 10  # stratified
    assert held8.ids.tolist() == sorted(held8.ids.tolist())  # in the source's order
    again = open_dataset("animal-mnist", 16, seed=7, limit=2000, heldout_images=8000)[1]
    assert torch.equal(held8.ids, again.ids)
    assert torch.equal(
        held8.images[:20], open_dataset("animal-mnist", 16, heldout=0)[0].images[held8.ids[:20]]
    )
    with pytest.raises(DataError, match="only 8400 images outside the 1600 training images"):
        open_dataset("animal-mnist", 16, seed=7, limit=2000, heldout_images=9000)


def test_the_interim_subset_is_a_fixed_stratified_part_of_the_heldout_set():
    from training.data import stratified_subset

    _, held = open_dataset("animal-mnist", 16, seed=2, limit=2000, heldout_images=4000)
    part = stratified_subset(held, 1000, seed=2)
    assert len(part) == 1000 and set(part.ids.tolist()) <= set(held.ids.tolist())
    assert torch.bincount(part.labels).tolist() == [100] * 10
    assert torch.equal(part.ids, stratified_subset(held, 1000, seed=2).ids)
    assert stratified_subset(held, None, seed=2) is held
    assert stratified_subset(held, 5000, seed=2) is held


def test_digits_loads():
    train, held = open_dataset("digits", 16, heldout=0.1)
    assert len(train) + len(held) == 1797
    assert train.images.shape[1:] == (3, 16, 16) and train.images.dtype == torch.uint8
    assert train.classes == tuple("0123456789")
    assert int(train.images.max()) >= 250 and int(train.images.min()) == 0


def test_synthetic_is_deterministic_and_learnable():
    a_train, a_held = open_dataset("synthetic", 32, seed=0)
    b_train, _ = open_dataset("synthetic", 32, seed=0)
    assert len(a_train) + len(a_held) == 1000
    assert torch.equal(a_train.images, b_train.images)
    assert torch.equal(a_train.labels, b_train.labels)
    # 1-nearest-neighbour on raw pixels must beat chance (0.1) by a wide margin.
    x_train = a_train.images.flatten(1).float()
    x_held = a_held.images.flatten(1).float()
    nearest = torch.cdist(x_held, x_train).argmin(dim=1)
    accuracy = (a_train.labels[nearest] == a_held.labels).float().mean().item()
    assert accuracy > 0.3, accuracy


def test_unknown_source_names_the_builtins():
    with pytest.raises(DataError) as err:
        open_dataset("imagenet-21k", 32)
    message = str(err.value)
    assert "imagenet-21k" in message and "animal-mnist" in message and "folder" in message
    assert isinstance(err.value, HSSLError)


def test_missing_animal_mnist_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps animal-mnist"):
        builtin._animal_mnist_dir()


# --- restricted unpickler ---------------------------------------------------------------------


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(_Exploit(marker), f)
    with pytest.raises(DataError, match="system") as err:
        load_numpy_pickle(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_restricted_unpickler_reads_numpy_arrays(tmp_path):
    path = tmp_path / "ok.gz"
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    with gzip.open(path, "wb") as f:
        pickle.dump(array, f)
    assert np.array_equal(load_numpy_pickle(path), array)


# --- folders ----------------------------------------------------------------------------------


def _png(path: Path, colour: tuple[int, int, int], size=(20, 12), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path)


@pytest.fixture
def two_class_folder(tmp_path) -> Path:
    root = tmp_path / "data"
    for i in range(5):
        _png(root / "red" / f"r{i}.png", (250, 0, 0), size=(20 + i, 12))
        _png(root / "blue" / f"b{i}.png", (0, 0, 250), mode="P" if i % 2 else "RGB")
    _png(root / "blue" / "nested" / "b9.PNG", (0, 0, 250), mode="L")
    (root / "red" / "notes.txt").write_text("not an image")
    return root


def test_folder_loads_two_classes(two_class_folder):
    train, held = open_dataset(str(two_class_folder), 8, heldout=2)
    assert train.classes == ("blue", "red") and not train.in_memory
    assert len(train) + len(held) == 11 and len(held) == 2
    counts = torch.bincount(torch.cat([train.labels, held.labels])).tolist()
    assert counts == [6, 5]
    for i in range(len(train)):
        image, label = train[i]
        assert image.shape == (3, 8, 8) and image.dtype == torch.uint8
        if label == 1:  # red
            assert image[0].float().mean() > 200 and image[2].float().mean() < 20
    batches = list(iterate_batches(train, 4, shuffle=True, seed=0, drop_last=False))
    assert [len(b[1]) for b in batches] == [4, 4, 1]
    assert batches[0][0].dtype == torch.uint8 and batches[0][1].dtype == torch.int64


@pytest.mark.parametrize("case", ["missing", "file", "no_classes", "no_images", "one_class"])
def test_folder_errors_name_the_path(tmp_path, case):
    target = tmp_path / "root"
    if case == "file":
        target.write_text("x")
    elif case == "no_classes":
        _png(target / "loose.png", (1, 2, 3))
    elif case == "no_images":
        (target / "a").mkdir(parents=True)
        (target / "b").mkdir()
        (target / "b" / "readme.md").write_text("x")
    elif case == "one_class":
        _png(target / "only" / "x.png", (1, 2, 3))
    with pytest.raises(DataError) as err:
        open_dataset(str(target), 8)
    assert str(target) in str(err.value)
    expected = {
        "missing": "does not exist",
        "file": "not a directory",
        "no_classes": "no class sub-folders",
        "no_images": "no images",
        "one_class": "at least 2",
    }[case]
    assert expected in str(err.value)


def test_folder_with_an_empty_class_folder_is_refused(two_class_folder):
    (two_class_folder / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra"):
        open_dataset(str(two_class_folder), 8)


def test_corrupt_image_fails_at_decode_not_at_scan(two_class_folder):
    bad = two_class_folder / "red" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    full, _ = open_dataset(str(two_class_folder), 8, heldout=0)  # the scan copes
    position = [str(f) for f in full.files].index(str(bad))
    with pytest.raises(DataError, match=r"broken\.jpg") as err:
        full[position]
    assert str(bad) in str(err.value)
    with pytest.raises(DataError, match=r"broken\.jpg"):
        list(iterate_batches(full, 4, shuffle=False, seed=0, drop_last=False))


def test_symlink_outside_root_is_refused(two_class_folder, tmp_path):
    outside = tmp_path / "secret.png"
    _png(outside, (9, 9, 9))
    link = two_class_folder / "red" / "sneaky.png"
    link.symlink_to(outside)
    with pytest.raises(DataError) as err:
        open_dataset(str(two_class_folder), 8)
    assert str(link) in str(err.value) and "outside" in str(err.value)


def test_symlink_inside_root_is_fine(two_class_folder):
    link = two_class_folder / "red" / "alias.png"
    link.symlink_to(two_class_folder / "red" / "r0.png")
    train, held = open_dataset(str(two_class_folder), 8, heldout=0)
    assert len(train) == 12 and len(held) == 0


# --- batches ----------------------------------------------------------------------------------


def test_every_index_once_per_epoch_and_deterministic():
    ds, _ = open_dataset("synthetic", 8, heldout=0, limit=103)
    runs = []
    for epoch in (0, 0, 1):
        seen, labels = [], []
        for images, batch_labels in iterate_batches(
            ds, 10, shuffle=True, seed=5, epoch=epoch, drop_last=False
        ):
            assert images.dtype == torch.uint8 and images.shape[1:] == (3, 8, 8)
            # Identify each image by matching pixels back to the set.
            match = (images.flatten(1)[:, None] == ds.images.flatten(1)[None]).all(-1)
            seen.extend(match.float().argmax(1).tolist())
            labels.append(batch_labels)
        assert sorted(seen) == list(range(103))
        assert torch.equal(torch.cat(labels), ds.labels[seen])
        runs.append(seen)
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert num_batches(ds, 10, drop_last=False) == 11
    assert num_batches(ds, 10, drop_last=True) == 10


def _order(ds, **kw) -> list[int]:
    images = torch.cat([b[0] for b in iterate_batches(ds, 7, seed=2, **kw)])
    match = (images.flatten(1)[:, None] == ds.images.flatten(1)[None]).all(-1)
    return match.float().argmax(1).tolist()


@pytest.mark.parametrize("drop_last", [False, True])
def test_rank_shards_are_disjoint(drop_last):
    ds, _ = open_dataset("synthetic", 8, heldout=0, limit=50)
    shards = [_order(ds, shuffle=True, drop_last=drop_last, rank=r, world_size=3) for r in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not set(shards[a]) & set(shards[b])
    total = sorted(i for s in shards for i in s)
    if drop_last:
        counts = {num_batches(ds, 7, drop_last=True, world_size=3, rank=r) for r in range(3)}
        assert counts == {2} and all(len(s) == 14 for s in shards)
    else:
        assert total == list(range(50))
        assert [len(s) for s in shards] == [17, 17, 16]


def test_folder_batches_follow_the_same_order(two_class_folder):
    ds, _ = open_dataset(str(two_class_folder), 8, heldout=0)
    kw = dict(shuffle=True, seed=1, epoch=2, drop_last=False)
    serial = list(iterate_batches(ds, 3, **kw))
    workers = list(iterate_batches(ds, 3, num_workers=1, **kw))
    labels = torch.cat([b[1] for b in serial])
    assert sorted(labels.tolist()) == sorted(ds.labels.tolist())
    assert torch.equal(labels, torch.cat([b[1] for b in workers]))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(serial, workers, strict=True))
    assert len(serial) == num_batches(ds, 3, drop_last=False) == 4
