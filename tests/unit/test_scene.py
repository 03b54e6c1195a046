"""digits-scene: deterministic camera-like frames, split by source digit and by photograph."""

from __future__ import annotations

import numpy as np
import pytest

from semlink.models.data import split_indices
from semlink.models.datasets import load_dataset, normalisation
from semlink.models.scene import (
    CHUNK,
    EASY_RECIPE,
    PLACEMENTS,
    SCENE_MEAN,
    TEST_PHOTOS,
    TRAIN_PHOTOS,
    SceneDataset,
    SceneRecipe,
    compose,
    load_digits_scene,
    nearest_neighbour_accuracy,
    photographs,
)


def small_train(n: int, **kw) -> SceneDataset:
    """A training split of ``n`` held-out digits (each shown up to :data:`PLACEMENTS` times),
    small enough to redraw in a test."""
    val = load_digits_scene("val", placements=PLACEMENTS, frames=n)
    assert len(val) == n
    return SceneDataset(
        "digits-scene",
        "train",
        val.images[:n],
        val.labels[:n],
        10,
        sources=val.sources[:n],
        pool=val.pool,
        **kw,
    )


def test_frames_are_deterministic_rgb_with_64_tokens():
    a = load_digits_scene("val", seed=3, placements=1)
    b = load_digits_scene("val", seed=3, placements=1)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape[1:] == (3, 128, 128) and a.images.dtype == np.float32
    assert a.masks is not None and a.masks.any(axis=(1, 2)).all()  # every frame shows its digit
    assert set(np.unique(a.labels)) == set(range(10))


def test_test_backgrounds_are_never_training_backgrounds():
    assert not set(TEST_PHOTOS) & set(TRAIN_PHOTOS)
    train = {p.tobytes()[:4096] for p in photographs("train")}
    assert not any(p.tobytes()[:4096] in train for p in photographs("test"))


def test_splits_hold_their_own_digits_and_train_epochs_are_fresh():
    idx = split_indices(1797, 0)
    assert not set(idx["train"]) & set(idx["test"])
    small = small_train(16)  # a training split of 16 digits: epochs redraw every frame
    e1, e2 = small.epoch(1), small.epoch(2)
    assert e1.shape == (16, 3, 128, 128) and not np.array_equal(e1, e2)
    np.testing.assert_array_equal(e1, small.epoch(1))  # seeded


@pytest.mark.slow
def test_the_factory_and_the_manifest_normalisation_agree():
    assert normalisation("digits-scene")["mean"] == list(SCENE_MEAN)
    assert len(split_indices(1797, 0)["val"]) * PLACEMENTS >= 2000  # placements of each digit
    val = load_dataset("digits-scene", "val", frames=400)  # the split's first 400 frames
    assert abs(float(val.images.mean())) < 0.3 and 0.7 < float(val.images.std()) < 1.3


@pytest.mark.slow
def test_a_digit_among_clutter_is_not_found_by_its_pixels():
    """The workload's point, on a small sample: nearest neighbours on raw pixels stay near
    chance (the full figure, with its interval: `semlink data stats`)."""
    rng = np.random.default_rng(0)
    train = load_digits_scene("train", placements=1)
    val = load_digits_scene("val", placements=1)
    assert nearest_neighbour_accuracy(train.images, train.labels, val.images, val.labels) < 0.3
    frames, masks = compose(train.sources[:20], train.pool, photographs("train"), rng)
    assert frames.min() >= 0.0 and frames.max() <= 1.0 and masks.mean() < 0.25


def test_the_curriculum_goes_from_easy_to_the_full_recipe():
    full = SceneRecipe()
    small = small_train(8, curriculum_epochs=4)
    assert small.recipe_at(0) == EASY_RECIPE and small.recipe_at(4) == full
    mid = small.recipe_at(2)
    assert full.digit_px[0] < mid.digit_px[0] < EASY_RECIPE.digit_px[0]
    assert mid.distractors[1] <= full.distractors[1]
    assert small.epoch(0).shape == (8, 3, 128, 128)


def test_an_epoch_is_the_same_composed_by_one_process_or_several():
    from dataclasses import replace

    inline = small_train(CHUNK + 8)  # two chunks of frames: the per-chunk seeds are exercised
    pooled = replace(inline, workers=2)
    first = inline.epoch(40)
    assert len(first) == CHUNK + 8
    assert np.array_equal(first, pooled.epoch(40))
    assert not np.array_equal(first, inline.epoch(41))


def test_epochs_ahead_gives_each_epoch_in_order():
    from semlink.models.data import epochs_ahead

    data = small_train(8)
    ahead = list(epochs_ahead(data, [3, 4, 5]))
    assert len(ahead) == 3
    for epoch, images in zip([3, 4, 5], ahead, strict=True):
        assert np.array_equal(images, data.epoch(epoch))
    assert list(epochs_ahead(data, [])) == []


def test_the_first_frames_of_a_split_are_composed_alone_the_same():
    """``frames`` composes only a split's first frames, and they are the whole split's first
    ones (what `semlink sample` and the split bench rely on)."""
    from semlink.models.scene import load_digits_scene

    whole = load_digits_scene("test", placements=2)
    first = load_digits_scene("test", placements=2, frames=5)
    assert len(first) == 5
    np.testing.assert_array_equal(first.images, whole.images[:5])
    np.testing.assert_array_equal(first.labels, whole.labels[:5])
    np.testing.assert_array_equal(first.masks, whole.masks[:5])
    with pytest.raises(ValueError, match="frames must be at least 1"):
        load_digits_scene("test", frames=0)
