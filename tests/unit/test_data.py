import numpy as np
import pytest

from semlink.models.data import (
    load_cifar10,
    load_digits_canvas,
    load_imagefolder,
    split_indices,
)
from semlink.models.datasets import load_dataset


def test_digits_canvas_shapes_and_sizes():
    splits = {s: load_digits_canvas(s) for s in ("train", "val", "test")}
    assert sum(len(d) for d in splits.values()) == 1797
    assert splits["train"].images.shape[1:] == (1, 48, 48)
    assert splits["train"].images.dtype == np.float32
    assert len(splits["train"]) == round(0.7 * 1797)


def test_digits_canvas_is_deterministic():
    a, b = load_digits_canvas("test", seed=3), load_digits_canvas("test", seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, load_digits_canvas("test", seed=4).images)


def test_splits_are_disjoint_by_source_image():
    parts = split_indices(1797, seed=0)
    assert not set(parts["train"]) & set(parts["val"])
    assert not set(parts["train"]) & set(parts["test"])
    assert not set(parts["val"]) & set(parts["test"])
    train, test = load_digits_canvas("train"), load_digits_canvas("test")
    train_sources = {s.tobytes() for s in train.sources}
    # identical 8x8 digits can exist in sklearn's set; allow at most a handful of exact duplicates
    assert sum(s.tobytes() in train_sources for s in test.sources) <= 3


def test_train_epochs_draw_fresh_positions_val_is_fixed():
    train = load_digits_canvas("train")
    assert not np.array_equal(train.epoch(0), train.epoch(1))
    np.testing.assert_array_equal(train.epoch(5), train.epoch(5))
    val = load_digits_canvas("val")
    np.testing.assert_array_equal(val.epoch(0), val.epoch(7))


def test_digit_covers_a_few_patches():
    test = load_digits_canvas("test")
    raw = test.images[:, 0] * 0.187 + 0.034
    # patches whose max raw value exceeds the noise floor by far: where the digit is
    patches = raw.reshape(len(raw), 6, 8, 6, 8).max(axis=(2, 4))
    covered = (patches > 0.6).sum(axis=(1, 2))
    assert covered.min() >= 1 and covered.max() <= 9


def test_on_disk_datasets_fail_with_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1..data_batch_5"):
        load_cifar10(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="<class_name>"):
        load_imagefolder(tmp_path / "missing", "train")
    with pytest.raises(ValueError, match="--data-root"):
        load_dataset("cifar10", "train")


def test_cifar10_reads_pickle_batches(tmp_path):
    import pickle

    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump(
                {
                    b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                    b"labels": list(range(10)) * 2,
                },
                f,
            )
    train, val, test = (load_cifar10(tmp_path, s) for s in ("train", "val", "test"))
    assert train.images.shape == (90, 3, 32, 32) and len(val) == 10 and len(test) == 20


def test_imagefolder_reads_class_folders(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(np.full((20, 30, 3), i * 20, np.uint8)).save(
                tmp_path / cls / f"{i}.png"
            )
    parts = [load_imagefolder(tmp_path, s, image_size=16) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == 20
    assert parts[0].images.shape[1:] == (3, 16, 16) and parts[0].num_classes == 2
