"""The dataset factory: every dataset semlink trains on, by name, and the normalisation its
loader applies (which the exported manifests carry).

``digits-canvas`` and ``digits-shifted`` live in :mod:`.data`, ``digits-scene`` and
``digits-scene-shifted`` in :mod:`.scene`,
CIFAR-10 and ImageFolder trees (read from local disk) in :mod:`.data`.
"""

from __future__ import annotations

from typing import Protocol

from semlink.models.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    DIGITS_MEAN,
    DIGITS_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Dataset,
    load_cifar10,
    load_digits_canvas,
    load_imagefolder,
)
from semlink.models.scene import (
    SCENE_MEAN,
    SCENE_STD,
    SHIFTED_RECIPE,
    SceneRecipe,
    load_digits_scene,
)

DATASETS = (
    "digits-canvas",
    "digits-scene",
    "digits-shifted",
    "digits-scene-shifted",
    "cifar10",
    "imagefolder",
)


def normalisation(dataset: str) -> dict[str, object]:
    """The manifest's ``normalization`` entry for a model trained on ``dataset``: the statistics
    its loader normalised with, so serving normalises uploads exactly the same way."""
    if dataset in ("digits-canvas", "digits-shifted"):
        mean, std = [DIGITS_MEAN], [DIGITS_STD]
    elif dataset in ("digits-scene", "digits-scene-shifted"):
        mean, std = list(SCENE_MEAN), list(SCENE_STD)
    elif dataset == "cifar10":
        mean, std = CIFAR_MEAN.tolist(), CIFAR_STD.tolist()
    elif dataset == "imagefolder":
        mean, std = IMAGENET_MEAN.tolist(), IMAGENET_STD.tolist()
    else:
        raise ValueError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    return {"dataset": dataset, "mean": [float(m) for m in mean], "std": [float(s) for s in std]}


def load_dataset(
    name: str,
    split: str,
    *,
    root: str | None = None,
    seed: int = 0,
    image_size: int = 64,
    placements: int | None = None,
    curriculum_epochs: int = 0,
    workers: int = 0,
    frames: int | None = None,
) -> Dataset:
    """One split of the dataset ``name`` (:data:`DATASETS`); ``root`` is required for the
    on-disk ones, ``image_size`` resizes ImageFolder trees, ``placements`` sets digits-scene's
    frames per source digit (training: fresh ones every epoch) and ``curriculum_epochs`` the
    epochs its training frames take to go from big uncluttered digits to the full recipe, and
    ``workers`` how many processes compose them (the frames are the same for any number);
    ``frames`` composes only a digits-scene split's first that many (the others load whole)."""
    if name in ("digits-canvas", "digits-shifted"):
        return load_digits_canvas(split, seed, shifted=name == "digits-shifted")
    if name in ("digits-scene", "digits-scene-shifted"):
        recipe = SHIFTED_RECIPE if name == "digits-scene-shifted" else SceneRecipe()
        scene = load_digits_scene(split, seed, placements, recipe, name, frames)
        scene.curriculum_epochs, scene.workers = curriculum_epochs, workers
        return scene
    if name in ("cifar10", "imagefolder") and root is None:
        raise ValueError(f"dataset {name!r} is read from local disk: pass --data-root PATH")
    if name == "cifar10":
        return load_cifar10(root, split, seed)  # type: ignore[arg-type]
    if name == "imagefolder":
        return load_imagefolder(root, split, image_size, seed)  # type: ignore[arg-type]
    raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")


class TrainingDataConfig(Protocol):
    """The data fields every training config (selector, JSCC, early exits) carries."""

    dataset: str
    data_root: str | None
    seed: int
    train_placements: int
    curriculum_epochs: int
    data_workers: int


def training_splits(cfg: TrainingDataConfig, image_size: int = 64) -> tuple[Dataset, Dataset]:
    """The train split (digits-scene: ``cfg.train_placements`` fresh frames of each digit an
    epoch, composed by ``cfg.data_workers`` processes, after its curriculum) and the validation
    split that a training config names."""
    train = load_dataset(
        cfg.dataset,
        "train",
        root=cfg.data_root,
        seed=cfg.seed,
        image_size=image_size,
        placements=cfg.train_placements,
        curriculum_epochs=cfg.curriculum_epochs,
        workers=cfg.data_workers,
    )
    val = load_dataset(cfg.dataset, "val", root=cfg.data_root, seed=cfg.seed, image_size=image_size)
    return train, val
