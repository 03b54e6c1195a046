"""``digits-scene``: camera-like frames on which token selection, JSCC and offloading have
something to win (issue: a workload where offloading pays).

Each 128x128 RGB frame (8x8 = 64 patch tokens of 16x16 pixels) is a random crop of a real
photograph (the ones scikit-image and scikit-learn ship: nothing is downloaded), flipped and
colour-jittered, with one handwritten digit from scikit-learn's set rendered on it in a colour
that contrasts with the background under it, at a random scale and position, among 4-8
distractor fragments cut from other digits of the same split (the cluttered-digits recipe of
attention-model papers). The label is the digit's class.

Splits are by source digit (as ``digits-canvas``) *and* by photograph: the photographs that give
test backgrounds (:data:`TEST_PHOTOS`) never appear in training or validation. Validation and
test hold several placements of each of their digits (2,000+ frames each), fixed by the seed; the
training split draws fresh placements every epoch (:meth:`SceneDataset.epoch`).
"""

from __future__ import annotations

import functools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from semlink.models.data import SPLITS, Dataset, split_indices

SCENE_SIZE = 128
SCENE_PATCH = 16  # 8 x 8 = 64 patch tokens (a power of two: the ViT's conv stem needs one)
# held-out photographs: test backgrounds only (a mix of colour scenes and grey textures)
TEST_PHOTOS = ("chelsea.png", "rocket.jpg", "gravel.png", "camera.png", "sklearn:flower.jpg")
TRAIN_PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "ihc.png",
    "brick.png",
    "grass.png",
    "moon.png",
    "coins.png",
    "cell.png",
    "clock_motion.png",
    "page.png",
    "text.png",
    "sklearn:china.jpg",
)
# per-channel statistics of training frames (seed 0, 2,048 frames; `semlink data stats` prints
# them): inputs are (pixel - mean) / std
SCENE_MEAN = (0.5069, 0.4472, 0.4205)
SCENE_STD = (0.2596, 0.2485, 0.2545)
PLACEMENTS = 8  # validation and test frames per source digit
# training frames are composed in seeded chunks of this many, so an epoch's frames are the same
# whether one process composes them or several (``SceneDataset.workers``)
CHUNK = 512


@dataclass(frozen=True)
class SceneRecipe:
    """What makes a frame: sizes in pixels of the 128x128 frame."""

    size: int = SCENE_SIZE
    digit_px: tuple[int, int] = (40, 64)  # rendered digit side
    distractors: tuple[int, int] = (4, 8)
    fragment_px: tuple[int, int] = (16, 32)  # rendered fragment side
    min_contrast: float = 0.45  # luminance gap between the digit's colour and the background

    def towards(self, target: SceneRecipe, t: float) -> SceneRecipe:
        """The recipe a fraction ``t`` in [0, 1] of the way from this one to ``target``."""
        t = min(max(t, 0.0), 1.0)

        def mix(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
            return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t))

        return SceneRecipe(
            target.size,
            mix(self.digit_px, target.digit_px),
            mix(self.distractors, target.distractors),
            mix(self.fragment_px, target.fragment_px),
            self.min_contrast + (target.min_contrast - self.min_contrast) * t,
        )


# the start of the curriculum: big, high-contrast digits, at most one fragment (a ViT trained on
# the full recipe from scratch stayed at chance for 100k frames; on this one it learns at once)
EASY_RECIPE = SceneRecipe(digit_px=(72, 96), distractors=(0, 1), min_contrast=0.6)
# digits-scene-shifted: the fine-tuning scenario of split learning and ALaST on camera frames (a
# camera moved further away: smaller, fainter digits in more clutter; same photographs, same
# digit splits, the same normalisation)
SHIFTED_RECIPE = SceneRecipe(
    digit_px=(24, 40), distractors=(6, 10), fragment_px=(12, 24), min_contrast=0.3
)


@functools.cache
def _photo(name: str) -> np.ndarray:
    """A bundled photograph as uint8 (H, W, 3) (grey ones replicated)."""
    if name.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(name.split(":", 1)[1])
    else:
        import skimage.data

        with Image.open(Path(skimage.data.__file__).parent / name) as img:
            arr = np.asarray(img.convert("RGB"))
    return np.ascontiguousarray(arr, np.uint8)


def photographs(split: str) -> list[np.ndarray]:
    """The background photographs of a split: test ones for ``test``, the others otherwise."""
    return [_photo(n) for n in (TEST_PHOTOS if split == "test" else TRAIN_PHOTOS)]


def _background(photos: list[np.ndarray], rng: np.random.Generator, size: int) -> np.ndarray:
    """A random crop of a random photograph, resized to ``size``, flipped, colour-jittered."""
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.5, 1.0) * min(h, w))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = Image.fromarray(photo[y : y + side, x : x + side])
    small = crop.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    bg = np.asarray(small, np.float32) / 255.0
    if rng.random() < 0.5:
        bg = bg[:, ::-1]
    gain = rng.uniform(0.8, 1.2) * rng.uniform(0.9, 1.1, size=3)  # brightness, colour cast
    mean = bg.mean()
    bg = (bg - mean) * rng.uniform(0.7, 1.3) + mean  # contrast
    noise = rng.standard_normal(bg.shape, dtype=np.float32) * 0.03  # a camera's sensor noise
    return np.clip(bg * gain.astype(np.float32) + noise, 0.0, 1.0)


def _render(glyph: np.ndarray, side: int) -> np.ndarray:
    """An (h, w) glyph in [0, 1] resized to ``side`` pixels on its longer edge."""
    h, w = glyph.shape
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray((glyph * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    return np.asarray(img, np.float32) / 255.0


def _contrasting(under: np.ndarray, rng: np.random.Generator, gap: float) -> np.ndarray:
    """An RGB colour whose luminance is at least ``gap`` away from the mean of ``under``."""
    lum = float((under @ np.array([0.299, 0.587, 0.114])).mean())
    for _ in range(20):
        colour = rng.uniform(0.0, 1.0, size=3)
        if abs(float(colour @ np.array([0.299, 0.587, 0.114])) - lum) >= gap:
            return colour
    return np.ones(3) if lum < 0.5 else np.zeros(3)


def _paste(frame: np.ndarray, alpha: np.ndarray, colour: np.ndarray, y: int, x: int) -> None:
    h, w = alpha.shape
    region = frame[y : y + h, x : x + w]
    region[:] = region * (1 - alpha[..., None]) + colour * alpha[..., None]


def compose(
    sources: np.ndarray,
    pool: np.ndarray,
    photos: list[np.ndarray],
    rng: np.random.Generator,
    recipe: SceneRecipe = SceneRecipe(),
) -> tuple[np.ndarray, np.ndarray]:
    """Frames for ``sources`` (N, 8, 8) in [0, 1], distractors cut from ``pool`` (digits of the
    same split). Returns float32 frames (N, 3, S, S) in [0, 1] and the digit's pixel masks
    (N, S, S)."""
    n, s = len(sources), recipe.size
    frames = np.empty((n, 3, s, s), np.float32)
    masks = np.zeros((n, s, s), bool)
    for i in range(n):
        frame = _background(photos, rng, s)
        for _ in range(rng.integers(recipe.distractors[0], recipe.distractors[1] + 1)):
            other = pool[rng.integers(len(pool))]
            fh, fw = rng.integers(3, 6, size=2)  # a 3-5 x 3-5 piece of an 8x8 digit
            fy, fx = rng.integers(0, 9 - fh), rng.integers(0, 9 - fw)
            piece = _render(
                other[fy : fy + fh, fx : fx + fw], int(rng.integers(*recipe.fragment_px))
            )
            py, px = (
                rng.integers(0, s - piece.shape[0] + 1),
                rng.integers(0, s - piece.shape[1] + 1),
            )
            under = frame[py : py + piece.shape[0], px : px + piece.shape[1]]
            _paste(frame, piece, _contrasting(under, rng, recipe.min_contrast), py, px)
        digit = _render(sources[i], int(rng.integers(recipe.digit_px[0], recipe.digit_px[1] + 1)))
        dy, dx = rng.integers(0, s - digit.shape[0] + 1), rng.integers(0, s - digit.shape[1] + 1)
        under = frame[dy : dy + digit.shape[0], dx : dx + digit.shape[1]]
        _paste(frame, digit, _contrasting(under, rng, recipe.min_contrast), dy, dx)
        masks[i, dy : dy + digit.shape[0], dx : dx + digit.shape[1]] = digit > 0.3
        frames[i] = frame.transpose(2, 0, 1)
    return frames, masks


def normalise(frames: np.ndarray) -> np.ndarray:
    """Frames in [0, 1] -> model inputs, with :data:`SCENE_MEAN` and :data:`SCENE_STD`."""
    mean = np.asarray(SCENE_MEAN, np.float32)[:, None, None]
    std = np.asarray(SCENE_STD, np.float32)[:, None, None]
    return ((frames - mean) / std).astype(np.float32)


def _compose_chunk(
    job: tuple[np.ndarray, np.ndarray, tuple[int, ...], SceneRecipe],
) -> np.ndarray:
    """Normalised training frames of one chunk: (sources, pool, seed key, recipe)."""
    sources, pool, key, recipe = job
    frames, _ = compose(sources, pool, photographs("train"), np.random.default_rng(key), recipe)
    return normalise(frames)


@functools.cache
def _executor(workers: int) -> ProcessPoolExecutor:
    """One pool of composing processes per size, for the life of the program (spawned, not
    forked: the trainer's threads and CUDA context stay out of the children)."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


@dataclass
class SceneDataset(Dataset):
    """A digits-scene split; ``masks`` mark the digit's pixels (for ``semlink data stats``)."""

    masks: np.ndarray | None = None
    pool: np.ndarray | None = None  # the split's digits, the distractors' source
    recipe: SceneRecipe = field(default_factory=SceneRecipe)
    curriculum_epochs: int = 0  # train epochs to go from EASY_RECIPE to ``recipe``; 0: none
    workers: int = 0  # processes composing training frames (0 or 1: this one)

    def recipe_at(self, epoch: int) -> SceneRecipe:
        """The recipe of training epoch ``epoch``: along the curriculum, then ``recipe``."""
        if epoch >= self.curriculum_epochs:
            return self.recipe
        return EASY_RECIPE.towards(self.recipe, epoch / self.curriculum_epochs)

    def epoch(self, epoch: int, augment: bool = False) -> np.ndarray:
        """Training frames of ``epoch``: fresh backgrounds, placements and clutter each time,
        composed by ``workers`` processes when there are more than one (same frames either way:
        each chunk of :data:`CHUNK` frames has its own seed)."""
        if self.split != "train" or self.sources is None or self.pool is None:
            return self.images
        recipe = self.recipe_at(epoch)
        jobs = [
            (
                self.sources[start : start + CHUNK],
                self.pool,
                (self.seed, SPLITS.index(self.split), 1000 + epoch, start // CHUNK),
                recipe,
            )
            for start in range(0, len(self.sources), CHUNK)
        ]
        if self.workers > 1:
            return np.concatenate(list(_executor(self.workers).map(_compose_chunk, jobs)))
        return np.concatenate([_compose_chunk(job) for job in jobs])

    def placements(self, count: int) -> Dataset:
        """Already several placements per digit (validation and test): itself."""
        return self


def load_digits_scene(
    split: str,
    seed: int = 0,
    placements: int | None = None,
    recipe: SceneRecipe = SceneRecipe(),
    name: str = "digits-scene",
    frames: int | None = None,
) -> SceneDataset:
    """One split of digits-scene (or, with :data:`SHIFTED_RECIPE`, digits-scene-shifted),
    deterministic from ``seed``: ``placements`` frames per source digit (default 1 for train,
    whose epochs draw fresh ones, :data:`PLACEMENTS` otherwise); ``frames``: only the first
    that many, the same as the whole split's first ones (each frame draws from the split's
    generator in turn), at that share of the cost."""
    from sklearn.datasets import load_digits

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if frames is not None and frames < 1:
        raise ValueError(f"frames must be at least 1 (or None: every frame), got {frames}")
    digits = load_digits()
    idx = split_indices(len(digits.target), seed)[split]
    sources = (digits.images[idx] / 16.0).astype(np.float32)
    labels = digits.target[idx].astype(np.int64)
    count = placements or (1 if split == "train" else PLACEMENTS)
    rng = np.random.default_rng((seed, SPLITS.index(split), 0))
    shown = np.tile(sources, (count, 1, 1))[:frames]
    composed, masks = compose(shown, sources, photographs(split), rng, recipe)
    return SceneDataset(
        name,
        split,
        normalise(composed),
        np.tile(labels, count)[:frames],
        10,
        sources=shown,
        seed=seed,
        masks=masks,
        pool=sources,
        recipe=recipe,
    )


def stats(
    split: str = "test", seed: int = 0, limit: int | None = None, train_epochs: int = 3
) -> dict:
    """What makes the workload what it is, measured on ``split`` (``limit`` frames at most):
    mean JPEG size at quality 90 (bytes), share of patches that touch the digit, the accuracy of
    a 1-nearest-neighbour classifier on raw pixels trained on ``train_epochs`` epochs of training
    frames, and the per-channel statistics of training frames."""
    import io

    data = load_digits_scene(split, seed)
    n = len(data) if limit is None else min(limit, len(data))
    frames = (
        data.images[:n] * np.asarray(SCENE_STD, np.float32)[:, None, None]
        + np.asarray(SCENE_MEAN, np.float32)[:, None, None]
    )
    sizes = []
    for f in frames:
        buf = io.BytesIO()
        pixels = np.clip(np.round(f.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        sizes.append(len(buf.getvalue()))
    grid = SCENE_SIZE // SCENE_PATCH
    assert data.masks is not None
    touched = data.masks[:n].reshape(n, grid, SCENE_PATCH, grid, SCENE_PATCH).any(axis=(2, 4))
    train = load_digits_scene("train", seed)
    train_x = np.concatenate([train.epoch(e) for e in range(train_epochs)])
    train_y = np.tile(train.labels, train_epochs)
    raw_frames = (
        train_x * np.asarray(SCENE_STD, np.float32)[:, None, None]
        + np.asarray(SCENE_MEAN, np.float32)[:, None, None]
    )
    return {
        "dataset": "digits-scene",
        "split": split,
        "n": n,
        "image_shape": list(data.image_shape),
        "patch_tokens": grid * grid,
        "jpeg_q90_bytes_mean": float(np.mean(sizes)),
        "digit_patch_share": float(touched.mean()),
        "knn1_raw_pixel_accuracy": nearest_neighbour_accuracy(
            train_x, train_y, data.images[:n], data.labels[:n]
        ),
        "knn1_train_frames": len(train_y),
        "train_channel_mean": [round(float(v), 4) for v in raw_frames.mean(axis=(0, 2, 3))],
        "train_channel_std": [round(float(v), 4) for v in raw_frames.std(axis=(0, 2, 3))],
    }


def nearest_neighbour_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    """Accuracy of 1-NN on flattened pixels (Euclidean), computed in chunks."""
    a = train_x.reshape(len(train_x), -1).astype(np.float32)
    a_sq = (a * a).sum(1)
    right = 0
    for start in range(0, len(test_x), 256):
        b = test_x[start : start + 256].reshape(-1, a.shape[1]).astype(np.float32)
        d = a_sq[None, :] - 2.0 * (b @ a.T)  # |b|^2 is the same for every candidate
        right += int((train_y[d.argmin(1)] == test_y[start : start + 256]).sum())
    return right / len(test_x)
