"""What several verbs share: the default model folders, the dataset flags, and how an evaluation
pairs a model with the data it was trained on."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from semlink.runtime.repository import DEFAULT_REPOSITORY, SHIPPED_PREFIX, shipped_pipeline

DEFAULT_MODEL_DIR = DEFAULT_REPOSITORY / "digits-vit" / "1"
DEFAULT_JSCC_DIR = DEFAULT_REPOSITORY / "digits-vit-jscc" / "1"
DEFAULT_EE_DIR = DEFAULT_REPOSITORY / "digits-ee" / "1"
"""The digits-canvas pipelines: what the training commands' defaults train and export (minutes)."""
DEFAULT_DATASET = "digits-scene"
"""What the evaluations and calibration measure when given neither --dataset nor --model-dir."""

log = logging.getLogger("semlink")


def add_data_args(p: argparse.ArgumentParser) -> None:
    """``--dataset``, ``--data-root``, ``--image-size`` and ``--seed`` of the evaluations."""
    p.add_argument(
        "--dataset",
        default=None,
        choices=["digits-canvas", "digits-scene", "cifar10", "imagefolder"],
        help="embedded digits-scene or digits-canvas, or a dataset read from --data-root "
        "(default: what --model-dir's model was trained on; without --model-dir, digits-scene)",
    )
    p.add_argument(
        "--data-root", default=None, help="folder of cifar10 batches or an ImageFolder tree"
    )
    p.add_argument("--image-size", type=int, default=64, help="resize target for imagefolder")
    p.add_argument("--seed", type=int, default=0)


def add_model_dir(p: argparse.ArgumentParser, kind: str) -> None:
    """``--model-dir``: the exported pipeline an evaluation reads, by default the dataset's
    shipped ``zoo/*-<kind>`` (see :func:`resolve_pipeline`)."""
    p.add_argument(
        "--model-dir",
        default=None,
        help=f"exported pipeline folder (default: the dataset's zoo/*-{kind})",
    )


def recorded_dataset(model_dir: Path | None, ckpt: Path | None = None) -> str | None:
    """The dataset a model records it was trained on: the training configuration in a checkpoint
    ``semlink train`` wrote, else the normalisation in the manifest of its folder (``ckpt``'s,
    or ``model_dir``); None when neither says."""
    if ckpt is not None and ckpt.is_file():
        from semlink.models import checkpoint

        dataset = checkpoint.load(ckpt).get("train_config", {}).get("dataset")
        if dataset:
            return str(dataset)
        model_dir = ckpt.parent
    manifest = model_dir / "manifest.json" if model_dir is not None else None
    if manifest is not None and manifest.is_file():
        dataset = json.loads(manifest.read_text()).get("normalization", {}).get("dataset")
        return str(dataset) if dataset else None
    return None


def resolve_pipeline(args: argparse.Namespace, kind: str, ckpt: str | None = None) -> None:
    """Fills in ``--dataset`` and ``--model-dir`` from each other, so an evaluation never pairs a
    model with data it was not trained on: a given ``--model-dir`` (or ``ckpt``) names its data;
    a given ``--dataset`` names its shipped pipeline ``zoo/<prefix>-<kind>/1``; with neither, the
    digits-scene pipeline on digits-scene."""
    ckpt_path = Path(ckpt) if ckpt else None
    if args.model_dir is None:
        dataset = args.dataset or recorded_dataset(None, ckpt_path) or DEFAULT_DATASET
        if dataset not in SHIPPED_PREFIX:
            raise ValueError(f"no shipped pipeline was trained on {dataset}: pass --model-dir")
        args.model_dir = str(DEFAULT_REPOSITORY / shipped_pipeline(dataset, kind) / "1")
    recorded = recorded_dataset(Path(args.model_dir), ckpt_path)
    if args.dataset and recorded and args.dataset != recorded:
        log.warning("evaluating a model trained on %s on %s", recorded, args.dataset)
    args.dataset = args.dataset or recorded or DEFAULT_DATASET


def regime_name(ckpt: dict) -> str:
    """The early-exit training regime a checkpoint records (``-plain``: not recursive)."""
    name = ckpt.get("metrics", {}).get("regime", "unknown")
    return name if ckpt["config"].get("recursive", True) else f"{name}-plain"
