"""``--data-root`` for the commands that read a dataset from local disk outside training and
evaluation: ``semlink export`` (the manifest's input check is fitted on the model's validation
split) and ``semlink sample`` (example inputs from its test split). CIFAR-10 and ImageFolder
models need it; the embedded datasets ignore it. Kept out of ``cli.py`` so that each verb's
module takes the flag the same way.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_data_root(parser: argparse.ArgumentParser, purpose: str) -> None:
    """Adds ``--data-root PATH``; ``purpose`` says what the command reads from it."""
    parser.add_argument(
        "--data-root",
        default=None,
        metavar="PATH",
        help=f"folder of the cifar10 python batches or an ImageFolder tree, for models trained "
        f"on those: {purpose} (the embedded datasets need none)",
    )


ON_DISK = ("cifar10", "imagefolder")
"""The datasets read from ``--data-root``."""


def check_export_data(dataset: str, data_root: str | None) -> str:
    """``dataset``, if the export can fit its input check: a dataset on local disk needs
    ``--data-root``. Raises ``ValueError`` naming the flag before any graph is exported."""
    if dataset in ON_DISK and data_root is None:
        raise ValueError(
            f"dataset {dataset!r} is read from local disk: pass --data-root PATH (the manifest's "
            "input check is fitted on its validation split)"
        )
    return dataset


def sample_split(model: Any, data_root: str | None, frames: int | None = None) -> Any:
    """The test split of the dataset ``model`` (a served model version) was trained on, as the
    model takes it (an ImageFolder tree resized to its input); ``data_root`` for a dataset on
    local disk; ``frames``: at least its first that many (a composed split: only those).
    Raises ``ValueError`` naming ``--data-root`` when it is needed and missing."""
    from semlink.models.datasets import load_dataset

    dataset = model.manifest.normalisation.dataset
    _, height, _ = model.image_shape
    return load_dataset(dataset, "test", root=data_root, image_size=height, frames=frames)
