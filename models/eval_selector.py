"""Evaluation of token selection (``semlink eval selector``): accuracy against budget, tokens
physically removed, side by side with the baselines of docs/methods.md#token-selection on the *same* trained model:

- ``selector``: the learned key (score minus threshold of the last gate), top-k;
- ``random``: k patches drawn uniformly at random (seeded);
- ``attention``: top-k by the class token's attention in the last device block (EViT-style);
- ``all tokens``: no selection (k = N).

Also measures the exported device head and server tail in ONNX Runtime at batch 1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semlink.models.data import Dataset
from semlink.models.stats import Difference, paired_bootstrap, pm
from semlink.models.vit import SelectorViT, num_kept

BUDGETS = (0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0)
METHODS = ("selector", "random", "attention")


# the differences the targets of docs/methods.md#token-selection / the workload issue rest on:
# (name, (method, budget), (method, budget), target in points, "above" or "within")
TARGETS = (
    ("selector at 0.25 vs all tokens", ("selector", "0.25"), ("selector", "1"), -2.0, "within"),
    ("random at 0.25 vs all tokens", ("random", "0.25"), ("selector", "1"), -20.0, "below"),
    (
        "selector vs class attention at 0.15",
        ("selector", "0.15"),
        ("attention", "0.15"),
        2.0,
        "above",
    ),
)


@torch.no_grad()
def correct_by_method(
    model: SelectorViT, data: Dataset, alpha: float, seed: int = 0, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Per-sample correctness (bool, in the data's order) of each ranking method at one budget,
    kept tokens only."""
    model.eval()
    k = num_kept(alpha, model.cfg.num_patches)
    gen = torch.Generator().manual_seed(seed)
    correct: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    for x, y in data.batches(batch_size):
        images = torch.from_numpy(x)
        out = model.forward_device(images, torch.full((len(y),), float(alpha)))
        rankings = {
            "selector": out.key,
            "random": torch.rand(out.key.shape, generator=gen),
            "attention": out.cls_attn,
        }
        for name, key in rankings.items():
            kept, _ = model.select(out.tokens, key, k)
            correct[name].append(model.forward_tail(kept).argmax(1).numpy() == y)
    return {name: np.concatenate(c) for name, c in correct.items()}


def accuracy_by_method(
    model: SelectorViT, data: Dataset, alpha: float, seed: int = 0, batch_size: int = 256
) -> dict[str, float]:
    """Accuracy (fraction) of each ranking method at one budget, kept tokens only."""
    return {
        name: float(c.mean())
        for name, c in correct_by_method(model, data, alpha, seed, batch_size).items()
    }


def evaluate(
    model: SelectorViT, data: Dataset, budgets: tuple[float, ...] = BUDGETS, seed: int = 0
) -> dict[str, Any]:
    """Returns the machine-readable figures: accuracy per method and budget (keys like ``"0.25"``)."""
    from semlink.models.progress import progress_bar

    acc: dict[str, dict[str, float]] = {m: {} for m in METHODS}
    per_sample: dict[tuple[str, str], np.ndarray] = {}
    for alpha in progress_bar(budgets, desc="eval budgets", unit="budget"):
        for name, c in correct_by_method(model, data, alpha, seed).items():
            acc[name][f"{alpha:g}"] = float(c.mean())
            per_sample[(name, f"{alpha:g}")] = c
    kept = {f"{a:g}": num_kept(a, model.cfg.num_patches) for a in budgets}
    targets = []
    for label, a, b, target, kind in TARGETS:
        if a not in per_sample or b not in per_sample:
            continue
        d = paired_bootstrap(per_sample[a], per_sample[b], seed=seed)
        # met on the point estimate; the interval beside it says how sure that is
        met = d.diff <= target if kind == "below" else d.diff >= target
        targets.append(
            {"name": label, "target": target, "kind": kind, "met": bool(met), **d.as_dict()}
        )
    return {
        "dataset": data.name,
        "split": data.split,
        "n_test": len(data),
        "num_patches": model.cfg.num_patches,
        "kept_tokens": kept,
        "accuracy": acc,
        "all_tokens": acc["selector"].get("1", None),
        "targets": targets,
    }


def onnx_latency(
    model_dir: Path, image_shape: tuple[int, ...], repeats: int = 200
) -> dict[str, float]:
    """Median per-image latency (ms) of head (at alpha = 0.25) and tail in ONNX Runtime, batch 1."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    head = ort.InferenceSession(
        str(model_dir / "head.onnx"), opts, providers=["CPUExecutionProvider"]
    )
    tail = ort.InferenceSession(
        str(model_dir / "tail.onnx"), opts, providers=["CPUExecutionProvider"]
    )
    image = np.random.default_rng(0).normal(size=(1, *image_shape)).astype(np.float32)
    alpha = np.array([0.25], np.float32)
    tokens, _ = head.run(None, {"image": image, "alpha": alpha})
    mask = np.ones(tokens.shape[:2], np.float32)
    timings: dict[str, list[float]] = {"head_ms": [], "tail_ms": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        head.run(None, {"image": image, "alpha": alpha})
        t1 = time.perf_counter()
        tail.run(None, {"tokens": tokens, "token_mask": mask})
        t2 = time.perf_counter()
        timings["head_ms"].append((t1 - t0) * 1e3)
        timings["tail_ms"].append((t2 - t1) * 1e3)
    return {k: float(np.median(v)) for k, v in timings.items()}


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width table: one row per budget, one column per method."""
    acc, n = result["accuracy"], result["n_test"]
    lines = [
        f"{result['dataset']} {result['split']} split, n={n}, tokens physically removed; "
        "accuracy % ± half the 95 % (Wilson) interval",
        f"{'alpha':>6} {'k':>3} " + " ".join(f"{m:>12}" for m in METHODS),
    ]
    for key, k in result["kept_tokens"].items():
        lines.append(f"{key:>6} {k:>3} " + " ".join(f"{pm(acc[m][key], n):>12}" for m in METHODS))
    if result.get("targets"):
        lines += ["", "paired differences (95 % bootstrap interval over the same images):"]
    for t in result.get("targets", []):
        d = Difference(t["diff"], t["lo"], t["hi"], t["n"])
        goal = {
            "within": f"within {-t['target']:g} points",
            "below": f"at least {-t['target']:g} points below",
            "above": f"at least {t['target']:g} points above",
        }[t["kind"]]
        lines.append(f"  {t['name']:<38} {d}  target {goal}: {'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    budgets = [float(k) for k in result["kept_tokens"]]
    for m, style in zip(METHODS, ("o-", "s--", "^:"), strict=True):
        ax.plot(budgets, [100 * result["accuracy"][m][f"{a:g}"] for a in budgets], style, label=m)
    ax.set_xlabel("budget α (fraction of patch tokens sent)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{result['dataset']}: accuracy vs budget, tokens removed")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(result: dict[str, Any], json_path: Path | None, plot_path: Path | None) -> None:
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    if plot_path is not None:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot(result, plot_path)
