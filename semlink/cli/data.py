"""``semlink data stats`` and ``semlink sample``: what the datasets are, and example inputs from
them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from semlink.data_root import add_data_root
from semlink.runtime.repository import DEFAULT_REPOSITORY

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


def _sample(args: argparse.Namespace) -> int:
    """``semlink sample``: test-split images of each model's dataset as PNG files, with labels."""
    from PIL import Image

    from semlink.data_root import sample_split
    from semlink.runtime.repository import resolve, scan

    if args.count < 1:
        raise SystemExit(f"error: --count must be at least 1, got {args.count}")
    models = scan(args.model_repository)
    for name in sorted(args.model or models):
        mv = resolve(models, name)
        norm = mv.manifest.normalisation
        try:
            data = sample_split(mv, args.data_root, args.count)
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


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``semlink data stats`` and ``semlink sample`` to the command line."""
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
