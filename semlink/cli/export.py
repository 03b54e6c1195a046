"""``semlink export``: a checkpoint's ONNX graphs, manifest and weights-only checkpoint, as one
version folder of the model repository."""

from __future__ import annotations

import argparse
from pathlib import Path

from semlink.cli.common import (
    DEFAULT_EE_DIR,
    DEFAULT_JSCC_DIR,
    DEFAULT_MODEL_DIR,
    DEFAULT_REPOSITORY,
    recorded_dataset,
    regime_name,
)
from semlink.data_root import add_data_root, check_export_data

EXPORT_READS = "its validation split, on which the manifest's input check is fitted"


def _export_dataset(args: argparse.Namespace) -> str:
    """What the exported model was trained on: ``--dataset``, else what its checkpoint records
    (the manifest carries that dataset's normalisation, so it is never guessed)."""
    dataset = args.dataset or recorded_dataset(None, Path(args.checkpoint))
    if dataset is None:
        raise ValueError(
            f"{args.checkpoint} does not record the dataset it was trained on: pass --dataset"
        )
    return check_export_data(dataset, args.data_root)


def _export(args: argparse.Namespace) -> int:
    """``semlink export selector|jscc``: ONNX head and tail, manifest, weights-only checkpoint."""
    from semlink.models.export import export_jscc_pipeline, export_selector_pipeline

    exporter = export_jscc_pipeline if args.what == "jscc" else export_selector_pipeline
    manifest = exporter(args.checkpoint, args.out, _export_dataset(args), args.data_root)
    print(f"exported {args.checkpoint} -> {args.out} (model hash {manifest['model_hash']})")
    return 0


def _export_early_exit(args: argparse.Namespace) -> int:
    from semlink.models import checkpoint
    from semlink.models.export_early_exit import export_early_exit_pipeline

    manifest = export_early_exit_pipeline(
        args.checkpoint, args.out, _export_dataset(args), args.device_blocks, args.data_root
    )
    for path in args.regimes:
        ckpt = checkpoint.load(path)
        dest = Path(args.out) / "regimes" / f"{regime_name(ckpt)}.pt"
        checkpoint.save(
            dest,
            kind="early-exit",
            config=ckpt["config"],
            state_dict=ckpt["state_dict"],
            metrics=ckpt["metrics"],
        )
        print(f"comparison regime {path} -> {dest}")
    print(
        f"exported {args.checkpoint} -> {args.out}: {len(manifest['graphs'])} graphs "
        f"(model hash {manifest['model_hash']})"
    )
    return 0


def _export_any_split(args: argparse.Namespace) -> int:
    from semlink.models.export_any_split import OptionGrid, export_any_split

    grid = OptionGrid(tuple(args.budgets), tuple(args.rates), tuple(args.jpeg_qualities))
    manifest = export_any_split(
        args.checkpoint, args.out, _export_dataset(args), grid, args.fp16_weights, args.data_root
    )
    flops = manifest["segment_flops"]
    share = (flops["steps"][0] + flops["select"][0]) / flops["full"]
    print(
        f"exported {args.checkpoint} -> {args.out}: {len(manifest['graphs'])} graphs, "
        f"{flops['full'] / 1e6:.0f} MFLOPs in all, {100 * share:.1f} % of them on the device up "
        f"to its first split (model hash {manifest['model_hash']})"
    )
    return 0


def _add_common(p: argparse.ArgumentParser, out: Path, out_help: str | None = None) -> None:
    """``--checkpoint`` and ``--out``, which every export takes."""
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default=str(out), help=out_help)


def _add_dataset(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default=None,
        help="what the model was trained on: the manifest carries its normalisation "
        "(default: what the checkpoint records)",
    )
    add_data_root(p, EXPORT_READS)


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``semlink export selector|jscc|early-exit|any-split`` to the command line."""
    ex = sub.add_parser("export", help="export ONNX graphs").add_subparsers(
        dest="what", required=True
    )
    p = ex.add_parser("selector", help="device head and server tail of a selector checkpoint")
    _add_common(p, DEFAULT_MODEL_DIR, "model repository version folder")
    _add_dataset(p)
    p.set_defaults(func=_export)

    p = ex.add_parser("jscc", help="head with JSCC encoder, tail with JSCC decoder")
    _add_common(p, DEFAULT_JSCC_DIR)
    _add_dataset(p)
    p.set_defaults(func=_export)

    p = ex.add_parser("early-exit", help="device, server and step graphs for every split")
    _add_common(p, DEFAULT_EE_DIR)
    p.add_argument(
        "--regimes", nargs="*", default=[], help="comparison checkpoints shipped in OUT/regimes"
    )
    p.add_argument(
        "--device-blocks",
        type=int,
        default=None,
        help="blocks the device holds (its exits and splits); default: the checkpoint's",
    )
    _add_dataset(p)
    p.set_defaults(func=_export_early_exit)

    p = ex.add_parser("any-split", help="every graph of an any-split network, weights shared")
    _add_common(p, DEFAULT_REPOSITORY / "any-split" / "1")
    p.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        default=[0.1, 0.25, 0.5],
        help="token budgets offered at every split",
    )
    p.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[1 / 16, 1 / 8, 1 / 4],
        help="JSCC rates offered with every budget",
    )
    p.add_argument(
        "--jpeg-qualities",
        type=int,
        nargs="+",
        default=[50, 75, 90],
        help="JPEG qualities of an uploaded picture",
    )
    p.add_argument(
        "--fp16-weights",
        action="store_true",
        help="store the shared weights (and the checkpoint) in fp16, cast back at load (half the size)",
    )
    _add_dataset(p)
    p.set_defaults(func=_export_any_split)
