"""``semlink eval``: the test-split figures of the selector ViT, the early-exit network and the
JSCC pipeline, each paired with the data its model was trained on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from semlink.cli.common import add_data_args, add_model_dir, regime_name, resolve_pipeline
from semlink.runtime.repository import DEFAULT_REPOSITORY, SHIPPED_PREFIX, shipped_pipeline


def _eval_selector(args: argparse.Namespace) -> int:
    from semlink.models import checkpoint
    from semlink.models.datasets import load_dataset
    from semlink.models.eval_selector import evaluate, format_table, onnx_latency, write

    resolve_pipeline(args, "vit", args.checkpoint)
    model_dir = Path(args.model_dir)
    ckpt_path = Path(args.checkpoint) if args.checkpoint else model_dir / "checkpoint.pt"
    model, _ = checkpoint.load_selector_vit(ckpt_path)
    data = load_dataset(
        args.dataset, args.split, root=args.data_root, seed=args.seed, image_size=args.image_size
    )
    if data.image_shape != (model.cfg.in_chans, model.cfg.image_size, model.cfg.image_size):
        raise SystemExit(
            f"error: the model expects images of shape {(model.cfg.in_chans, model.cfg.image_size, model.cfg.image_size)}, "
            f"the {args.dataset} data has {data.image_shape}; pass --image-size or another checkpoint"
        )
    result = evaluate(model, data, seed=args.seed)
    if not args.checkpoint and (model_dir / "head.onnx").is_file():
        result["onnx_latency_ms_batch1"] = onnx_latency(model_dir, data.image_shape)
    print(format_table(result))
    if "onnx_latency_ms_batch1" in result:
        lat = result["onnx_latency_ms_batch1"]
        print(
            f"ONNX Runtime, batch 1, 1 thread: device head {lat['head_ms']:.2f} ms, server tail {lat['tail_ms']:.2f} ms"
        )
    write(result, Path(args.json) if args.json else None, Path(args.plot) if args.plot else None)
    return 0


def _eval_early_exit(args: argparse.Namespace) -> int:
    from semlink.models.datasets import load_dataset
    from semlink.models.eval_early_exit import evaluate, format_table, plot
    from semlink.models.train_early_exit import load_early_exit

    resolve_pipeline(args, "ee", args.checkpoint)
    model_dir = Path(args.model_dir)
    default_path = Path(args.checkpoint) if args.checkpoint else model_dir / "checkpoint.pt"
    default, ckpt = load_early_exit(default_path)
    models = {regime_name(ckpt): default}
    regimes_dir = Path(args.regimes) if args.regimes else model_dir / "regimes"
    for path in sorted(regimes_dir.glob("*.pt")):
        m, c = load_early_exit(path)
        models.setdefault(regime_name(c), m)
    val, test = (
        load_dataset(
            args.dataset, split, root=args.data_root, seed=args.seed, image_size=args.image_size
        )
        for split in ("val", "test")
    )
    result, traces = evaluate(models, regime_name(ckpt), val, test, args.trace_placements)
    print(format_table(result))
    if args.traces:
        for split, t in traces.items():
            t.save(Path(args.traces) / f"{split}.npz")
        print(f"exit traces (val, test) -> {args.traces}")
    _write_json(args.json, result)
    if args.plot:
        plot(result, Path(args.plot))
    return 0


def _eval_jscc(args: argparse.Namespace) -> int:
    from semlink.models import checkpoint, semcom
    from semlink.models.baselines import METHODS
    from semlink.models.datasets import load_dataset
    from semlink.models.eval_jscc import (
        HEADLINE_DRAWS,
        evaluate,
        format_headline,
        format_table,
        plot,
    )

    if args.noise_draws is not None and args.noise_draws < 1:
        raise ValueError(f"--noise-draws must be >= 1, got {args.noise_draws}")
    resolve_pipeline(args, "vit-jscc")
    if args.selector_checkpoint is None:
        if args.dataset not in SHIPPED_PREFIX:
            raise ValueError(
                f"no shipped selector ViT for {args.dataset}: pass --selector-checkpoint"
            )
        vit = DEFAULT_REPOSITORY / shipped_pipeline(args.dataset, "vit") / "1"
        args.selector_checkpoint = str(vit / "checkpoint.pt")
    model, _ = semcom.load(Path(args.model_dir) / "checkpoint.pt")
    test = load_dataset(args.dataset, "test", root=args.data_root, seed=args.seed)
    classifier, _ = checkpoint.load_selector_vit(args.selector_checkpoint)
    baselines_from = Path(args.baselines_from) if args.baselines_from else None
    result = evaluate(
        model,
        classifier,
        test,
        channel=args.channel,
        seed=args.seed,
        per_rate_dir=Path(args.per_rate_dir),
        baselines_from=baselines_from,
        draws=HEADLINE_DRAWS if args.noise_draws is None else args.noise_draws,
    )
    if baselines_from is not None:
        reused = sum(r["method"] in METHODS for r in result["grid"])
        print(f"baselines: {reused} rows from {args.baselines_from} (same classifier and data)")
    print(format_table(result))
    print()
    print(format_headline(result["headline"]))
    _write_json(args.json, result)
    if args.plot:
        plot(result, Path(args.plot))
    return 0


def _eval_options(args: argparse.Namespace) -> int:
    from semlink.models.datasets import load_dataset
    from semlink.models.option_table import report, write_tables
    from semlink.runtime.manifest import Manifest
    from semlink.runtime.repository import ModelVersion

    resolve_pipeline(args, "split")
    folder = Path(args.model_dir)
    manifest = Manifest.parse(
        json.loads((folder / "manifest.json").read_text()), str(folder / "manifest.json")
    )
    mv = ModelVersion(folder.parent.name, folder.name, folder, manifest)
    data = {
        s: load_dataset(
            args.dataset, s, root=args.data_root, seed=args.seed, image_size=args.image_size
        )
        for s in ("val", "test")
    }
    write_tables(mv, data["val"], data["test"], seed=args.seed)
    result = report(mv)
    print(result["table"])
    _write_json(args.json, result)
    return 0


def _write_json(path: str | None, result: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=1) + "\n")


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``semlink eval selector|early-exit|jscc|options`` to the command line."""
    ev = sub.add_parser("eval", help="evaluate a model").add_subparsers(dest="what", required=True)
    p = ev.add_parser("selector", help="accuracy vs budget against random and attention top-k")
    add_data_args(p)
    add_model_dir(p, "vit")
    p.add_argument(
        "--checkpoint", default=None, help="evaluate this checkpoint instead of the model folder's"
    )
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--json", default=None, help="write the figures as JSON here")
    p.add_argument("--plot", default=None, help="write the accuracy-vs-budget plot (PNG) here")
    p.set_defaults(func=_eval_selector)

    p = ev.add_parser(
        "early-exit", help="regimes, exit rules and exit traces of the early-exit network"
    )
    add_data_args(p)
    add_model_dir(p, "ee")
    p.add_argument("--checkpoint", default=None, help="evaluate this checkpoint as the default")
    p.add_argument(
        "--regimes", default=None, help="folder of regime checkpoints (default: MODEL_DIR/regimes)"
    )
    p.add_argument("--traces", default=None, help="write val.npz / test.npz exit traces here")
    p.add_argument(
        "--trace-placements",
        type=int,
        default=10,
        help="digits-canvas: record the traces over this many placements of each split's digits",
    )
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    p.set_defaults(func=_eval_early_exit)

    p = ev.add_parser(
        "jscc", help="test-split grid against JPEG / raw baselines and per-rate coders"
    )
    add_data_args(p)
    add_model_dir(p, "vit-jscc")
    p.add_argument(
        "--selector-checkpoint",
        default=None,
        help="the classifier the baselines use (default: the dataset's zoo/*-vit)",
    )
    p.add_argument("--per-rate-dir", default="runs/jscc-per-rate")
    p.add_argument("--channel", default="awgn", choices=["awgn", "rayleigh"])
    p.add_argument(
        "--baselines-from",
        default=None,
        metavar="EVAL_JSON",
        help="reuse the JPEG/raw baseline rows of an earlier --json file measured with the same "
        "classifier, test images, grid and seed (checked; they do not depend on the coder)",
    )
    p.add_argument(
        "--noise-draws",
        type=int,
        default=None,
        metavar="N",
        help="channel noise draws per test image at the headline's operating point (the JSCC "
        "figure there is the mean over them; default: eval_jscc.HEADLINE_DRAWS, 8)",
    )
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    p.set_defaults(func=_eval_jscc)

    p = ev.add_parser(
        "options",
        help="every option of an any-split network on every frame: options.json (validation, the "
        "controllers' table) and outcomes_val/test.npz beside the manifest; prints the test table",
    )
    add_data_args(p)
    add_model_dir(p, "split")
    p.add_argument("--json", default=None, help="write the test table as JSON here")
    p.set_defaults(func=_eval_options)
