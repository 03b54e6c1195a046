"""``semlink calibrate``: the JSCC pipeline's accuracy / channel-use table on the validation
split, which the Lyapunov controller decides from."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from semlink.cli.common import add_data_args, add_model_dir, resolve_pipeline


def _calibrate(args: argparse.Namespace) -> int:
    from semlink.models import semcom
    from semlink.models.datasets import load_dataset
    from semlink.models.eval_jscc import calibrate

    resolve_pipeline(args, "vit-jscc")
    model_dir = Path(args.model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    model, _ = semcom.load(model_dir / "checkpoint.pt")
    val = load_dataset(args.dataset, "val", root=args.data_root, seed=args.seed)
    table = calibrate(model, val, manifest["model_hash"], args.channel, args.seed)
    out = model_dir / "calibration.json"
    out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"calibration table ({len(table['grid'])} points, validation split) -> {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``semlink calibrate`` to the command line."""
    p = sub.add_parser("calibrate", help="accuracy / channel-use table on the validation split")
    add_data_args(p)
    add_model_dir(p, "vit-jscc")
    p.add_argument("--channel", default="awgn", choices=["awgn", "rayleigh"])
    p.set_defaults(func=_calibrate)
