"""The ``semlink`` command line: train, eval, export, zoo, and the serving processes.

Training and evaluation import torch lazily, so the serving subcommands run on a torch-free
install.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from semlink.data_root import add_data_root, check_export_data
from semlink.flags import LazyParser, add_dataclass, dataclass_from
from semlink.runtime import logs
from semlink.runtime.repository import DEFAULT_REPOSITORY

DEFAULT_MODEL_DIR = DEFAULT_REPOSITORY / "digits-vit" / "1"
DEFAULT_JSCC_DIR = DEFAULT_REPOSITORY / "digits-vit-jscc" / "1"
DEFAULT_EE_DIR = DEFAULT_REPOSITORY / "digits-ee" / "1"
"""The digits-canvas pipelines: what the training commands' defaults train and export (minutes)."""
DEFAULT_DATASET = "digits-scene"
"""What the evaluations and calibration measure when given neither --dataset nor --model-dir."""
ZOO_PREFIX = {"digits-scene": "scene", "digits-canvas": "digits"}
"""The shipped pipelines of each embedded dataset: ``zoo/<prefix>-vit``, ``-vit-jscc``, ``-ee``."""

log = logging.getLogger("semlink")
EXPORT_READS = "its validation split, on which the manifest's input check is fitted"


def _add_data_args(p: argparse.ArgumentParser) -> None:
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


def _recorded_dataset(model_dir: Path | None, ckpt: Path | None = None) -> str | None:
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


def _resolve_pipeline(args: argparse.Namespace, kind: str, ckpt: str | None = None) -> None:
    """Fills in ``--dataset`` and ``--model-dir`` from each other, so an evaluation never pairs a
    model with data it was not trained on: a given ``--model-dir`` (or ``ckpt``) names its data;
    a given ``--dataset`` names its shipped pipeline ``zoo/<prefix>-<kind>/1``; with neither, the
    digits-scene pipeline on digits-scene."""
    ckpt_path = Path(ckpt) if ckpt else None
    if args.model_dir is None:
        dataset = args.dataset or _recorded_dataset(None, ckpt_path) or DEFAULT_DATASET
        if dataset not in ZOO_PREFIX:
            raise ValueError(f"no shipped pipeline was trained on {dataset}: pass --model-dir")
        args.model_dir = str(DEFAULT_REPOSITORY / f"{ZOO_PREFIX[dataset]}-{kind}" / "1")
    recorded = _recorded_dataset(Path(args.model_dir), ckpt_path)
    if args.dataset and recorded and args.dataset != recorded:
        log.warning("evaluating a model trained on %s on %s", recorded, args.dataset)
    args.dataset = args.dataset or recorded or DEFAULT_DATASET


def _train_selector(args: argparse.Namespace) -> int:
    from semlink.models.train_selector import TrainSelectorConfig, train_selector

    metrics = train_selector(
        dataclass_from(args, TrainSelectorConfig), args.out, resume=args.resume
    )
    print(f"checkpoint: {args.out}")
    print(f"training time: {metrics['train_seconds']:.0f} s")
    print("validation accuracy, tokens removed:", json.dumps(metrics["val_best"]))
    return 0


def _train_split(args: argparse.Namespace) -> int:
    from semlink.bench import write_figures
    from semlink.models.train_split import SplitConfig, train_split

    cfg = dataclass_from(args, SplitConfig)
    result = train_split(cfg)
    mb = 1e6
    print(
        f"{cfg.method} ξ={cfg.xi:g}: test accuracy {100 * result['accuracy']:.1f} % "
        f"(from {100 * result['accuracy_before']:.1f} %), {result['bytes_up'] / mb:.2f} MB up, "
        f"{result['bytes_down'] / mb:.2f} MB down, {result['seconds']:.0f} s"
    )
    write_figures(args.json, result)
    return 0


def _train_finetune(args: argparse.Namespace) -> int:
    from semlink.bench import write_figures
    from semlink.models.alast import FinetuneConfig, finetune

    cfg = dataclass_from(args, FinetuneConfig)
    result = finetune(cfg)
    print(
        f"{'ALaST' if cfg.alast else 'full'} fine-tuning: test accuracy "
        f"{100 * result['accuracy']:.1f} % (from {100 * result['accuracy_before']:.1f} %), "
        f"{result['epoch_seconds']:.2f} s/epoch, {result['step_flops'] / 1e9:.2f} GFLOPs/step, "
        f"{result['step_memory_bytes'] / 1e6:.1f} MB saved for backward/step"
    )
    write_figures(args.json, result)
    return 0


def _train_early_exit(args: argparse.Namespace) -> int:
    from semlink.models.train_early_exit import TrainEarlyExitConfig, train_early_exit

    metrics = train_early_exit(
        dataclass_from(args, TrainEarlyExitConfig), args.out, resume=args.resume
    )
    print(f"checkpoint: {args.out} ({metrics['train_seconds']:.0f} s)")
    print("validation accuracy per exit:", " ".join(f"{a:.3f}" for a in metrics["val"]))
    return 0


def _train_policy(args: argparse.Namespace) -> int:
    from semlink.models.train_policy import TrainPolicyConfig, train_policy

    cfg = dataclass_from(args, TrainPolicyConfig)
    metrics = train_policy(cfg)
    print(
        f"policy: {cfg.out or cfg.model_dir}/policy.onnx (PPO, {metrics['timesteps']} steps, "
        f"{metrics['train_seconds']:.0f} s, validation reward {metrics['val_reward']:.4f}, "
        f"seed {metrics['seed']})"
    )
    if len(metrics["seeds"]) > 1:
        print("validation reward per seed:", json.dumps(metrics["seeds"]))
    return 0


def _eval_selector(args: argparse.Namespace) -> int:
    from semlink.models import checkpoint
    from semlink.models.datasets import load_dataset
    from semlink.models.eval_selector import evaluate, format_table, onnx_latency, write

    _resolve_pipeline(args, "vit", args.checkpoint)
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


def _export_dataset(args: argparse.Namespace) -> str:
    """What the exported model was trained on: ``--dataset``, else what its checkpoint records
    (the manifest carries that dataset's normalisation, so it is never guessed)."""
    dataset = args.dataset or _recorded_dataset(None, Path(args.checkpoint))
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


def _regime_name(ckpt: dict) -> str:
    name = ckpt.get("metrics", {}).get("regime", "unknown")
    return name if ckpt["config"].get("recursive", True) else f"{name}-plain"


def _export_early_exit(args: argparse.Namespace) -> int:
    from semlink.models import checkpoint
    from semlink.models.export_early_exit import export_early_exit_pipeline

    manifest = export_early_exit_pipeline(
        args.checkpoint, args.out, _export_dataset(args), args.device_blocks, args.data_root
    )
    for path in args.regimes:
        ckpt = checkpoint.load(path)
        dest = Path(args.out) / "regimes" / f"{_regime_name(ckpt)}.pt"
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


def _eval_early_exit(args: argparse.Namespace) -> int:
    from semlink.models.datasets import load_dataset
    from semlink.models.eval_early_exit import evaluate, format_table, plot
    from semlink.models.train_early_exit import load_early_exit

    _resolve_pipeline(args, "ee", args.checkpoint)
    model_dir = Path(args.model_dir)
    default_path = Path(args.checkpoint) if args.checkpoint else model_dir / "checkpoint.pt"
    default, ckpt = load_early_exit(default_path)
    models = {_regime_name(ckpt): default}
    regimes_dir = Path(args.regimes) if args.regimes else model_dir / "regimes"
    for path in sorted(regimes_dir.glob("*.pt")):
        m, c = load_early_exit(path)
        models.setdefault(_regime_name(c), m)
    val, test = (
        load_dataset(
            args.dataset, split, root=args.data_root, seed=args.seed, image_size=args.image_size
        )
        for split in ("val", "test")
    )
    result, traces = evaluate(models, _regime_name(ckpt), val, test, args.trace_placements)
    print(format_table(result))
    if args.traces:
        for split, t in traces.items():
            t.save(Path(args.traces) / f"{split}.npz")
        print(f"exit traces (val, test) -> {args.traces}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(result, Path(args.plot))
    return 0


def _train_jscc(args: argparse.Namespace) -> int:
    from semlink.models.jscc import RATES
    from semlink.models.train_jscc import TrainJSCCConfig, train_jscc

    if args.per_rate:
        out_dir = Path(args.per_rate_dir)
        for rate in RATES:
            cfg = dataclass_from(args, TrainJSCCConfig, fixed_rate=rate)
            train_jscc(cfg, out_dir / f"r{rate:g}.pt", resume=args.resume)
        print(f"per-rate coders: {out_dir}")
        return 0
    metrics = train_jscc(dataclass_from(args, TrainJSCCConfig), args.out, resume=args.resume)
    print(f"checkpoint: {args.out} ({metrics['train_seconds']:.0f} s)")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from semlink.models import semcom
    from semlink.models.datasets import load_dataset
    from semlink.models.eval_jscc import calibrate

    _resolve_pipeline(args, "vit-jscc")
    model_dir = Path(args.model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    model, _ = semcom.load(model_dir / "checkpoint.pt")
    val = load_dataset(args.dataset, "val", root=args.data_root, seed=args.seed)
    table = calibrate(model, val, manifest["model_hash"], args.channel, args.seed)
    out = model_dir / "calibration.json"
    out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"calibration table ({len(table['grid'])} points, validation split) -> {out}")
    return 0


def _eval_jscc(args: argparse.Namespace) -> int:
    import torch

    from semlink.models import checkpoint, semcom
    from semlink.models.datasets import load_dataset
    from semlink.models.eval_jscc import (
        ALPHAS,
        HEADLINE_DRAWS,
        SNRS,
        baseline_grid,
        baselines_key,
        format_headline,
        format_table,
        headline_comparison,
        plot,
        reuse_baselines,
        summarise,
    )
    from semlink.models.jscc import RATES

    if args.noise_draws is not None and args.noise_draws < 1:
        raise ValueError(f"--noise-draws must be >= 1, got {args.noise_draws}")
    _resolve_pipeline(args, "vit-jscc")
    if args.selector_checkpoint is None:
        if args.dataset not in ZOO_PREFIX:
            raise ValueError(
                f"no shipped selector ViT for {args.dataset}: pass --selector-checkpoint"
            )
        vit = DEFAULT_REPOSITORY / f"{ZOO_PREFIX[args.dataset]}-vit" / "1"
        args.selector_checkpoint = str(vit / "checkpoint.pt")
    model, _ = semcom.load(Path(args.model_dir) / "checkpoint.pt")
    test = load_dataset(args.dataset, "test", root=args.data_root, seed=args.seed)
    classifier, _ = checkpoint.load_selector_vit(args.selector_checkpoint)
    key = baselines_key(classifier, test, seed=args.seed)
    earlier = reuse_baselines(args.baselines_from, key) if args.baselines_from else None

    grid = [
        {**r, "method": "semlink"}
        for r in semcom.accuracy_grid(model, test, SNRS, ALPHAS, RATES, args.channel, args.seed)
    ]
    per_rate_dir = Path(args.per_rate_dir)
    for rate in RATES:
        path = per_rate_dir / f"r{rate:g}.pt"
        if path.is_file():
            pr, _ = semcom.load(path)
            grid += [
                {**r, "method": "per-rate"}
                for r in semcom.accuracy_grid(
                    pr, test, SNRS, ALPHAS, (rate,), args.channel, args.seed
                )
            ]
    if earlier is not None:
        print(
            f"baselines: {len(earlier)} rows from {args.baselines_from} (same classifier and data)"
        )
        grid += earlier
    else:
        grid += baseline_grid(classifier, test, seed=args.seed)
    with torch.no_grad():
        reference = float(
            (classifier(torch.from_numpy(test.images), 1.0).argmax(1).numpy() == test.labels).mean()
        )
    result = {
        "dataset": test.name,
        "split": "test",
        "n_test": len(test),
        "channel": args.channel,
        "seed": args.seed,
        "reference_accuracy": reference,
        "grid": grid,
        "baselines_key": key,
    }
    result["summary"] = summarise(result)
    result["headline"] = headline_comparison(
        model,
        classifier,
        test,
        args.channel,
        args.seed,
        draws=HEADLINE_DRAWS if args.noise_draws is None else args.noise_draws,
    )
    print(format_table(result))
    print()
    print(format_headline(result["headline"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(result, Path(args.plot))
    return 0


def _sample(args: argparse.Namespace) -> int:
    """``semlink sample``: test-split images of each model's dataset as PNG files, with labels."""
    from PIL import Image

    from semlink.data_root import sample_split
    from semlink.runtime.repository import resolve, scan

    models = scan(args.model_repository)
    for name in sorted(args.model or models):
        mv = resolve(models, name)
        norm = mv.manifest.normalisation
        try:
            data = sample_split(mv, args.data_root)
        except ValueError as exc:
            print(f"{name}: skipped ({exc})")
            continue
        out = Path(args.out) / name
        out.mkdir(parents=True, exist_ok=True)
        labels = {}
        for i in range(min(args.count, len(data))):
            pixels = norm.invert(data.images[i])
            Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(
                out / f"{i}.png"
            )
            labels[f"{i}.png"] = int(data.labels[i])
        (out / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
        c, h, w = mv.image_shape
        print(
            f"{out}: {len(labels)} {norm.dataset} test images ({w}x{h}, "
            f"{'grey' if c == 1 else 'RGB'}), labels in labels.json"
        )
    return 0


# what digits-scene must be for the methods to have something to win (issue: a workload where
# offloading pays): (figure, target, holds)
SCENE_TARGETS = (
    ("jpeg_q90_bytes_mean", "mean JPEG at quality 90 >= 5 kB", lambda v: v >= 5000),
    ("digit_patch_share", "share of patches touching the digit <= 25 %", lambda v: v <= 0.25),
    ("knn1_raw_pixel_accuracy", "1-NN on raw pixels <= 40 %", lambda v: v <= 0.40),
)


def _data_stats(args: argparse.Namespace) -> int:
    """``semlink data stats``: the properties that make digits-scene the workload it is."""
    from semlink.bench import write_figures
    from semlink.models.scene import stats
    from semlink.models.stats import wilson

    result = stats(args.split, args.seed, args.limit)
    n = result["n"]
    lo, hi = wilson(result["knn1_raw_pixel_accuracy"], n)
    result["knn1_raw_pixel_accuracy_ci95"] = [lo, hi]
    print(
        f"{result['dataset']} {args.split}: {n} frames of {result['image_shape']}, "
        f"{result['patch_tokens']} patch tokens"
    )
    shown = {
        "jpeg_q90_bytes_mean": f"{result['jpeg_q90_bytes_mean']:.0f} B",
        "digit_patch_share": f"{100 * result['digit_patch_share']:.1f} %",
        "knn1_raw_pixel_accuracy": f"{100 * result['knn1_raw_pixel_accuracy']:.1f} % "
        f"(n = {n}, 95 % CI {100 * lo:.1f}-{100 * hi:.1f} %, "
        f"{result['knn1_train_frames']} training frames)",
    }
    for key, target, holds in SCENE_TARGETS:
        print(f"  {'✓' if holds(result[key]) else '✗ MISSED'} {target}: {shown[key]}")
    print(
        f"  training frames' channel mean {result['train_channel_mean']}, "
        f"std {result['train_channel_std']}"
    )
    write_figures(args.json, result)
    return 0


@dataclass(frozen=True)
class ZooRecipe:
    """How ``semlink zoo`` builds one dataset's pipelines: their name prefix, the folder under
    ``--work`` for the training checkpoints, and the extra flags of the training steps."""

    prefix: str
    work: str
    selector: tuple[str, ...] = ()
    jscc: tuple[str, ...] = ()
    early_exit: tuple[str, ...] = ()
    export_early_exit: tuple[str, ...] = ()
    warm_start: bool = False
    """Start the early-exit regimes' backbone from the selector ViT (``--init-from``; disjoint
    reuses mixed's backbone phase) instead of from scratch."""


ZOO_RECIPES = {
    "digits-canvas": ZooRecipe("digits", "."),
    # 128x128 RGB, 64 tokens of 16x16; fresh frames each epoch, a curriculum from big uncluttered
    # digits to the full recipe (from scratch on the full recipe the ViT stayed at chance). On a
    # GPU add --device cuda --data-workers 12 to the training steps (the frames are the same).
    "digits-scene": ZooRecipe(
        "scene",
        "scene",
        selector=(
            *("--model.image-size", "128", "--model.in-chans", "3", "--model.patch-size", "16"),
            *("--train-placements", "8", "--curriculum-epochs", "30", "--data-workers", "2"),
            *("--backbone-epochs", "80", "--selector-epochs", "25"),
        ),
        # a 512-wide coder: 95.7 against 94.8 % on validation at 10 dB, r 1/8 for the 256-wide
        jscc=(
            *("--train-placements", "8", "--epochs", "30", "--data-workers", "2"),
            *("--jscc.hidden", "512"),
        ),
        # from scratch the early-exit ViT needs ~40 epochs (3 h a regime on 2 CPU cores): every
        # regime starts from the selector's backbone and gets 5 epochs (mixed and disjoint: 1 of
        # backbone and final classifier, 4 of exits), all at one learning rate
        early_exit=(
            *("--model.patch-size", "16", "--model.embed-dim", "96", "--train-placements", "8"),
            *("--epochs", "5", "--backbone-epochs", "1", "--lr", "5e-4", "--finetune-lr", "5e-4"),
            *("--data-workers", "2"),
        ),
        # the device holds the selector pipeline's two blocks: exits after blocks 1 and 2
        export_early_exit=("--device-blocks", "2"),
        warm_start=True,
    ),
}


def zoo_steps(args: argparse.Namespace) -> list[list[str]]:
    """The ``semlink`` commands that rebuild the shipped pipelines of one dataset: the selector ViT, then its JSCC coder, then
    the early-exit network (its three regimes and the plain variant) and its RL offloading
    policy; each trained, exported, evaluated on the test split (the coder calibrated, the exit
    traces recorded and the policy trained, on validation). The dataset's recipe
    (:data:`ZOO_RECIPES`) names the pipelines and adds its flags to each step."""
    recipe = ZOO_RECIPES[args.dataset]
    data = ["--dataset", args.dataset]
    root = Path(args.out)
    vit, jscc = root / f"{recipe.prefix}-vit" / "1", root / f"{recipe.prefix}-vit-jscc" / "1"
    work = Path(args.work) / recipe.work
    resume = ["--resume"] if args.resume else []
    steps = [
        ["train", "selector", *data, *recipe.selector, "--out", str(work / "selector.pt"), *resume],
        [
            "export",
            "selector",
            *data,
            "--checkpoint",
            str(work / "selector.pt"),
            "--out",
            str(vit),
        ],
        [
            "eval",
            "selector",
            *data,
            "--model-dir",
            str(vit),
            "--json",
            str(vit / "eval.json"),
            "--plot",
            str(vit / "eval.png"),
        ],
        [
            "train",
            "jscc",
            *data,
            *recipe.jscc,
            "--selector-checkpoint",
            str(vit / "checkpoint.pt"),
            "--out",
            str(work / "jscc.pt"),
            *resume,
        ],
        ["export", "jscc", *data, "--checkpoint", str(work / "jscc.pt"), "--out", str(jscc)],
        ["calibrate", *data, "--model-dir", str(jscc)],
        [
            "eval",
            "jscc",
            *data,
            "--model-dir",
            str(jscc),
            "--selector-checkpoint",
            str(vit / "checkpoint.pt"),
            "--json",
            str(jscc / "eval.json"),
            "--plot",
            str(jscc / "eval.png"),
        ],
    ]
    ee, ee_work = root / f"{recipe.prefix}-ee" / "1", work / "early-exit"
    mixed, joint = str(ee_work / "mixed.pt"), str(ee_work / "joint.pt")
    reuse = ["--from-backbone", mixed]
    warm = ["--init-from", str(work / "selector.pt")] if recipe.warm_start else []
    ee_train = ["train", "early-exit", *data, *recipe.early_exit, *resume]
    ee_eval = [
        "eval",
        "early-exit",
        *data,
        "--model-dir",
        str(ee),
        "--traces",
        str(ee / "traces"),
        "--json",
        str(ee / "eval.json"),
        "--plot",
        str(ee / "eval.png"),
    ]
    steps += [
        [*ee_train, *warm, "--regime", "mixed", "--out", mixed],
        [
            *ee_train,
            "--regime",
            "disjoint",
            *reuse,
            "--out",
            str(ee_work / "disjoint.pt"),
        ],
        [*ee_train, *warm, "--regime", "joint", "--out", joint],
        [
            *ee_train,
            *warm,
            "--regime",
            "joint",
            "--no-model.recursive",
            "--out",
            str(ee_work / "joint-plain.pt"),
        ],
        [
            "export",
            "early-exit",
            *data,
            "--checkpoint",
            joint,
            "--out",
            str(ee),
            "--regimes",
            *(str(ee_work / f"{r}.pt") for r in ("mixed", "disjoint", "joint-plain")),
            *recipe.export_early_exit,
        ],
        ee_eval,
        ["train", "policy", "--model-dir", str(ee)],
    ]
    return steps


def _zoo(args: argparse.Namespace) -> int:
    for argv in zoo_steps(args):
        log.info("semlink %s", " ".join(argv))
        if rc := main(argv):
            return rc
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = LazyParser(prog="semlink", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="json: one object per line"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model").add_subparsers(dest="what", required=True)

    def selector(p: argparse.ArgumentParser) -> None:
        from semlink.models.train_selector import TrainSelectorConfig

        add_dataclass(p, TrainSelectorConfig)
        p.add_argument("--out", default="runs/selector.pt", help="checkpoint (written every epoch)")
        p.add_argument("--resume", action="store_true", help="continue from --out if it exists")

    p = train.add_parser(
        "selector", help="the budget-conditioned token-selection ViT", populate=selector
    )
    p.set_defaults(func=_train_selector)

    def early_exit(p: argparse.ArgumentParser) -> None:
        from semlink.models.train_early_exit import TrainEarlyExitConfig

        add_dataclass(p, TrainEarlyExitConfig)
        p.add_argument(
            "--out", default="runs/early-exit/mixed.pt", help="checkpoint (written every epoch)"
        )
        p.add_argument("--resume", action="store_true", help="continue from --out if it exists")

    p = train.add_parser(
        "early-exit",
        help="the recursive early-exit network in one training regime",
        populate=early_exit,
    )
    p.set_defaults(func=_train_early_exit)

    def split(p: argparse.ArgumentParser) -> None:
        from semlink.models.train_split import SplitConfig

        add_dataclass(p, SplitConfig)
        p.add_argument("--json", default=None, help="write the result here")

    p = train.add_parser(
        "split",
        help="split learning across a counted message boundary, ADC or a baseline",
        populate=split,
    )
    p.set_defaults(func=_train_split)

    def finetune(p: argparse.ArgumentParser) -> None:
        from semlink.models.alast import FinetuneConfig

        add_dataclass(p, FinetuneConfig)
        p.add_argument("--json", default=None, help="write the result here")

    p = train.add_parser(
        "finetune", help="fine-tune a pretrained ViT, in full or with ALaST", populate=finetune
    )
    p.set_defaults(func=_train_finetune)

    def policy(p: argparse.ArgumentParser) -> None:
        from semlink.models.train_policy import TrainPolicyConfig

        add_dataclass(
            p, TrainPolicyConfig, skip=["weights"], defaults={"model_dir": str(DEFAULT_EE_DIR)}
        )

    p = train.add_parser(
        "policy", help="the RL offloading policy (PPO) on recorded exit traces", populate=policy
    )
    p.set_defaults(func=_train_policy)

    def jscc(p: argparse.ArgumentParser) -> None:
        from semlink.models.train_jscc import TrainJSCCConfig

        add_dataclass(
            p,
            TrainJSCCConfig,
            defaults={"selector_checkpoint": str(DEFAULT_MODEL_DIR / "checkpoint.pt")},
        )
        p.add_argument("--out", default="runs/jscc.pt", help="checkpoint path")
        p.add_argument(
            "--per-rate",
            action="store_true",
            help="train one coder per rate of the grid (ablation)",
        )
        p.add_argument("--per-rate-dir", default="runs/jscc-per-rate")
        p.add_argument("--resume", action="store_true", help="continue from --out if it exists")

    p = train.add_parser("jscc", help="the nested JSCC coder on a trained selector", populate=jscc)
    p.set_defaults(func=_train_jscc)

    ev = sub.add_parser("eval", help="evaluate a model").add_subparsers(dest="what", required=True)
    p = ev.add_parser("selector", help="accuracy vs budget against random and attention top-k")
    _add_data_args(p)
    p.add_argument(
        "--model-dir",
        default=None,
        help="exported pipeline folder (default: the dataset's zoo/*-vit)",
    )
    p.add_argument(
        "--checkpoint", default=None, help="evaluate this checkpoint instead of the model folder's"
    )
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--json", default=None, help="write the figures as JSON here")
    p.add_argument("--plot", default=None, help="write the accuracy-vs-budget plot (PNG) here")
    p.set_defaults(func=_eval_selector)

    ex = sub.add_parser("export", help="export ONNX graphs").add_subparsers(
        dest="what", required=True
    )
    p = ex.add_parser("selector", help="device head and server tail of a selector checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default=str(DEFAULT_MODEL_DIR), help="model repository version folder")
    p.add_argument(
        "--dataset",
        default=None,
        help="what the model was trained on: the manifest carries its normalisation "
        "(default: what the checkpoint records)",
    )
    add_data_root(p, EXPORT_READS)
    p.set_defaults(func=_export)

    p = ex.add_parser("jscc", help="head with JSCC encoder, tail with JSCC decoder")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default=str(DEFAULT_JSCC_DIR))
    p.add_argument(
        "--dataset",
        default=None,
        help="what the model was trained on: the manifest carries its normalisation "
        "(default: what the checkpoint records)",
    )
    add_data_root(p, EXPORT_READS)
    p.set_defaults(func=_export)

    p = ev.add_parser(
        "early-exit", help="regimes, exit rules and exit traces of the early-exit network"
    )
    _add_data_args(p)
    p.add_argument(
        "--model-dir",
        default=None,
        help="exported pipeline folder (default: the dataset's zoo/*-ee)",
    )
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

    p = ex.add_parser("early-exit", help="device, server and step graphs for every split")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default=str(DEFAULT_EE_DIR))
    p.add_argument(
        "--regimes", nargs="*", default=[], help="comparison checkpoints shipped in OUT/regimes"
    )
    p.add_argument(
        "--device-blocks",
        type=int,
        default=None,
        help="blocks the device holds (its exits and splits); default: the checkpoint's",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="what the model was trained on: the manifest carries its normalisation "
        "(default: what the checkpoint records)",
    )
    add_data_root(p, EXPORT_READS)
    p.set_defaults(func=_export_early_exit)

    p = sub.add_parser("calibrate", help="accuracy / channel-use table on the validation split")
    _add_data_args(p)
    p.add_argument(
        "--model-dir",
        default=None,
        help="exported pipeline folder (default: the dataset's zoo/*-vit-jscc)",
    )
    p.add_argument("--channel", default="awgn", choices=["awgn", "rayleigh"])
    p.set_defaults(func=_calibrate)

    p = ev.add_parser(
        "jscc", help="test-split grid against JPEG / raw baselines and per-rate coders"
    )
    _add_data_args(p)
    p.add_argument(
        "--model-dir",
        default=None,
        help="exported pipeline folder (default: the dataset's zoo/*-vit-jscc)",
    )
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

    data = sub.add_parser("data", help="the datasets").add_subparsers(dest="what", required=True)
    p = data.add_parser(
        "stats",
        help="what makes digits-scene the workload it is: JPEG size, digit patch share, 1-NN on pixels",
    )
    p.add_argument("--dataset", default="digits-scene", choices=["digits-scene"])
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="measure on this many frames only")
    p.add_argument("--json", default=None, help="write the figures here")
    p.set_defaults(func=_data_stats)

    p = sub.add_parser(
        "sample", help="example inputs: test images of each model's dataset, as PNG, with labels"
    )
    p.add_argument("--out", default="samples", help="folder; one subfolder per model")
    p.add_argument("--count", type=int, default=8, help="images per model")
    p.add_argument("--model", nargs="+", default=None, help="these models only (default: all)")
    p.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    add_data_root(p, "their test images")
    p.set_defaults(func=_sample)

    p = sub.add_parser("zoo", help="rebuild the shipped pipelines (train, export, calibrate, eval)")
    p.add_argument(
        "--out", default=str(DEFAULT_MODEL_DIR.parent.parent), help="model repository root"
    )
    p.add_argument(
        "--dataset",
        default="digits-scene",
        choices=sorted(ZOO_RECIPES),
        help="whose pipelines: digits-scene (scene-*, the default) or digits-canvas (digits-*)",
    )
    p.add_argument("--work", default="runs", help="folder for the training checkpoints")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=_zoo)

    from semlink import serve_cli

    serve_cli.add_commands(sub)
    return parser


def _under_torchrun(args: argparse.Namespace) -> int:
    """A training command as one of ``torchrun``'s processes: rank 0 prints, logs and writes
    (checkpoints, figures); the others train their slice quietly. The RL policy trains on rank
    0 alone (PPO here is one process; the others end at once)."""
    from semlink.models import distributed

    if not distributed.quiet_unless_main():
        if args.func is _train_policy:
            log.warning(
                "train policy runs on rank 0 only; rank %d ends", distributed.rank_from_env()
            )
            return 0
        if getattr(args, "json", None):
            args.json = None
    result = int(args.func(args) or 0)
    if args.func is not _train_policy:
        distributed.current().barrier()  # nobody leaves before rank 0 has written
    return result


TRAIN_COMMANDS = ("selector", "early-exit", "split", "finetune", "policy", "jscc")


def main(argv: list[str] | None = None) -> int:
    import os

    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        if (
            args.command == "train"
            and args.what in TRAIN_COMMANDS
            and int(os.environ.get("WORLD_SIZE", "1")) > 1
        ):
            return _under_torchrun(args)
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
