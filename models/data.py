"""Datasets: the embedded ``digits-canvas`` default, CIFAR-10 and ImageFolder trees from local disk.

Everything here is numpy-only (no torch), so the device, the demo client and the benchmarks can
load images without the training extra. Images are ``float32`` arrays shaped ``(N, C, H, W)``,
already normalised; labels are ``int64`` arrays shaped ``(N,)``.

``digits-canvas``: scikit-learn's bundled 8x8 handwritten digits (no download), upscaled 2x to
16x16 and placed at a uniformly random position on a 48x48 canvas of Gaussian noise (sigma 0.1).
With patch size 8 the canvas is 36 patch tokens, of which the digit covers 4 to 9: only a few
tokens carry the object, which is the situation token selection exists for. Splits are by
*source image* (70 / 15 / 15), so no digit image appears in two splits. The train split draws
fresh positions and noise every epoch (``Dataset.epoch(e)``); validation and test are fixed.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
DIGITS_CANVAS = 48
DIGITS_SCALE = 2
DIGITS_NOISE = 0.1
# digits-shifted: the fine-tuning scenario of split learning and ALaST. The same digits, 1.5x
# larger (24x24) on three times the noise: a model trained on digits-canvas needs adapting.
SHIFTED_SCALE = 3
SHIFTED_NOISE = 0.3
# Normalisation constants of digits-canvas (measured once on the train split, rounded).
DIGITS_MEAN = 0.034
DIGITS_STD = 0.187
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Dataset:
    """One split of a dataset, as normalised arrays.

    For ``digits-canvas`` train, ``images`` holds epoch 0; call :meth:`epoch` for fresh positions.
    """

    name: str
    split: str
    images: np.ndarray  # (N, C, H, W) float32, normalised
    labels: np.ndarray  # (N,) int64
    num_classes: int
    sources: np.ndarray | None = None  # digits-canvas: the 8x8 source digits, (N, 8, 8) in [0, 1]
    seed: int = 0
    canvas: tuple[float, int] = (DIGITS_NOISE, DIGITS_SCALE)  # digits-*: noise sigma, upscaling

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def epoch(self, epoch: int, augment: bool = False) -> np.ndarray:
        """Images for a training epoch: new canvas positions and noise for digits-canvas, and with
        ``augment`` each digit randomly rotated (+-12 degrees) and scaled (0.9-1.1) first."""
        if self.sources is None or self.split != "train":
            return self.images
        rng = np.random.default_rng((self.seed, SPLITS.index(self.split), epoch))
        return _compose_canvas(self.sources, rng, augment, *self.canvas)

    def placements(self, count: int) -> Dataset:
        """digits-canvas: the split's own digits, each placed ``count`` times at fresh seeded
        positions and noise (the first placement is the split's fixed one). Still only this
        split's digits, so a held-out split stays held out. Other datasets: ``self``."""
        if self.sources is None or count <= 1:
            return self
        images = [self.images]
        for p in range(1, count):
            rng = np.random.default_rng((self.seed, SPLITS.index(self.split), 10_000 + p))
            images.append(_compose_canvas(self.sources, rng, False, *self.canvas))
        return Dataset(
            self.name,
            self.split,
            np.concatenate(images),
            np.tile(self.labels, count),
            self.num_classes,
            np.tile(self.sources, (count, 1, 1)),
            self.seed,
        )

    def batches(
        self, batch_size: int, *, epoch: int | None = None, shuffle: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields ``(images, labels)`` batches; ``epoch`` selects fresh train images and order."""
        images = self.images if epoch is None else self.epoch(epoch)
        order = np.arange(len(self))
        if shuffle:
            np.random.default_rng((self.seed, 99, epoch or 0)).shuffle(order)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield images[idx], self.labels[idx]


def epochs_ahead(
    data: Dataset, epochs: Iterable[int], augment: bool = False, ahead: bool = True
) -> Iterator[np.ndarray]:
    """Training images of each of ``epochs`` in turn (:meth:`Dataset.epoch`); with ``ahead`` the
    next epoch's are composed in a background thread while the caller trains on this one."""
    if not ahead:
        yield from (data.epoch(e, augment) for e in epochs)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="epoch-ahead") as pool:
        todo = iter(epochs)
        first = next(todo, None)
        pending = None if first is None else pool.submit(data.epoch, first, augment)
        while pending is not None:
            images = pending.result()
            following = next(todo, None)
            pending = None if following is None else pool.submit(data.epoch, following, augment)
            yield images


def normalize_digits(canvas: np.ndarray) -> np.ndarray:
    """Maps raw digits-canvas pixel values (digit in [0, 1] plus noise) to model inputs."""
    return ((canvas - DIGITS_MEAN) / DIGITS_STD).astype(np.float32)


def _compose_canvas(
    sources: np.ndarray,
    rng: np.random.Generator,
    augment: bool = False,
    noise: float = DIGITS_NOISE,
    scale: int = DIGITS_SCALE,
) -> np.ndarray:
    """Places each upscaled source digit on its own noisy canvas. Returns (N, 1, 48, 48)."""
    n = len(sources)
    size = sources.shape[1] * scale
    digits = np.kron(sources, np.ones((scale, scale), dtype=np.float32))
    if augment:
        digits = _random_affine(digits, rng)
    canvas = rng.normal(0.0, noise, size=(n, DIGITS_CANVAS, DIGITS_CANVAS))
    canvas = canvas.astype(np.float32)
    ys = rng.integers(0, DIGITS_CANVAS - size + 1, size=n)
    xs = rng.integers(0, DIGITS_CANVAS - size + 1, size=n)
    for i in range(n):
        canvas[i, ys[i] : ys[i] + size, xs[i] : xs[i] + size] += digits[i]
    return normalize_digits(canvas)[:, None]


def _random_affine(
    digits: np.ndarray, rng: np.random.Generator, max_deg: float = 12.0, max_scale: float = 0.1
) -> np.ndarray:
    """Rotates and scales each (S, S) digit about its centre (training augmentation only)."""
    from scipy.ndimage import affine_transform

    out = np.empty_like(digits)
    centre = (np.array(digits.shape[1:]) - 1) / 2.0
    for i, d in enumerate(digits):
        a = np.deg2rad(rng.uniform(-max_deg, max_deg))
        s = rng.uniform(1 - max_scale, 1 + max_scale)
        m = (
            np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / s
        )  # output -> input coordinates
        out[i] = affine_transform(d, m, offset=centre - m @ centre, order=1, mode="constant")
    return out


def split_indices(
    n: int, seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> dict[str, np.ndarray]:
    """Disjoint, seeded train / val / test indices over ``n`` source items."""
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return {
        "train": np.sort(order[:n_train]),
        "val": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val :]),
    }


def load_digits_canvas(split: str, seed: int = 0, shifted: bool = False) -> Dataset:
    """The embedded default dataset (see module docstring). Deterministic from ``seed``.
    ``shifted``: digits-shifted, larger digits on noisier canvases (the fine-tuning target)."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    _check_split(split)
    digits = load_digits()
    sources = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    idx = split_indices(len(labels), seed)[split]
    rng = np.random.default_rng((seed, SPLITS.index(split), 0))
    canvas = (SHIFTED_NOISE, SHIFTED_SCALE) if shifted else (DIGITS_NOISE, DIGITS_SCALE)
    images = _compose_canvas(sources[idx], rng, False, *canvas)
    name = "digits-shifted" if shifted else "digits-canvas"
    return Dataset(name, split, images, labels[idx], 10, sources[idx], seed, canvas)


def load_cifar10(root: str | Path, split: str, seed: int = 0) -> Dataset:
    """CIFAR-10 from the standard python-pickle batches in ``root``.

    The official test batch is the test split; the five training batches are split 90 / 10 into
    train / val by a seeded permutation.
    """
    _check_split(split)
    root = Path(root)
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found at {root}: expected the python-pickle batches "
            f"data_batch_1..data_batch_5 and test_batch in that folder (missing: {', '.join(missing)}); "
            "unpack cifar-10-python.tar.gz and point --data-root at cifar-10-batches-py"
        )
    xs, ys = [], []
    for name in names:
        try:
            with open(root / name, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        except (KeyError, ValueError, pickle.UnpicklingError, EOFError) as exc:
            raise ValueError(
                f"{root / name} is not a CIFAR-10 python batch (a pickled dict with b'data' of "
                f"shape (N, 3072) uint8 and b'labels'): {exc}"
            ) from exc
    x = np.concatenate(xs).astype(np.float32) / 255.0
    y = np.concatenate(ys)
    if split != "test":
        order = np.random.default_rng(seed).permutation(len(y))
        cut = int(0.9 * len(y))
        keep = order[:cut] if split == "train" else order[cut:]
        x, y = x[np.sort(keep)], y[np.sort(keep)]
    x = (x - CIFAR_MEAN[:, None, None]) / CIFAR_STD[:, None, None]
    return Dataset("cifar10", split, x.astype(np.float32), y, 10, seed=seed)


def load_imagefolder(root: str | Path, split: str, image_size: int = 64, seed: int = 0) -> Dataset:
    """A class-per-folder tree (e.g. Imagenette), resized to ``image_size`` and ImageNet-normalised.

    If ``root`` has ``train/`` and ``val/`` subfolders (Imagenette's layout) those are used, with
    ``val/`` as the test split and 10 % of ``train/`` held out as validation; otherwise one tree is
    split 70 / 15 / 15 per class by a seeded permutation.
    """
    from PIL import Image

    _check_split(split)
    root = Path(root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        tree = root / ("val" if split == "test" else "train")
        files, labels, classes = _scan_tree(tree)
        if split != "test":
            parts = split_indices(len(files), seed, (0.9, 0.1, 0.0))
            keep = parts["train" if split == "train" else "val"]
            files, labels = [files[i] for i in keep], labels[keep]
    else:
        files, labels, classes = _scan_tree(root)
        keep = split_indices(len(files), seed)[split]
        files, labels = [files[i] for i in keep], labels[keep]
    images = np.empty((len(files), 3, image_size, image_size), dtype=np.float32)
    for i, path in enumerate(files):
        with Image.open(path) as img:
            arr = np.asarray(
                img.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
            )
        images[i] = ((arr.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(
            2, 0, 1
        )
    return Dataset("imagefolder", split, images, labels, len(classes), seed=seed)


def _scan_tree(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    if not root.is_dir():
        raise FileNotFoundError(
            f"ImageFolder root {root} does not exist: expected ROOT/<class_name>/<image>.png|jpg "
            "(or ROOT/train/<class>/... and ROOT/val/<class>/... as in Imagenette)"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        files += found
        labels += [label] * len(found)
    if len(classes) < 2 or not files:
        raise ValueError(
            f"ImageFolder root {root} has {len(classes)} class folders and {len(files)} images: "
            f"expected at least two ROOT/<class_name>/ folders holding {'/'.join(IMAGE_EXTENSIONS)} files"
        )
    return files, np.asarray(labels, dtype=np.int64), classes


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
