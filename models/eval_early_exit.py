"""Evaluation of early-exit networks (``semlink eval early-exit``).

Per regime: every exit's accuracy, and the multi-exit accuracy-vs-compute curve (a sweep of exit
thresholds, no offloading) summarised by its normalised area (:func:`area_under_curve`). For the
shipped pipeline: the device's exit rules (fixed threshold, confidence growth) over a sweep, each
as accuracy, fraction answered on the device, mean device FLOPs and bytes sent. The growth rule's
operating point is *chosen on the validation split* (most device answers within 1 point of the
final exit's validation accuracy) and reported on the test split.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semlink.models.data import Dataset
from semlink.models.early_exit import EarlyExitNet, count_segment_flops
from semlink.models.exit_traces import (
    ExitTraces,
    accuracy_at_flops,
    apply_rule,
    area_under_curve,
    early_exit_curve,
)
from semlink.models.stats import pm

CURVE_TAUS = np.concatenate([np.linspace(0.0, 0.9, 19), 1.0 - np.logspace(-1.3, -4, 12), [1.01]])
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999)
GROWTH_EXIT = (0.8, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999)
GROWTH_GROW = (-0.1, -0.05, 0.0, 0.02, 0.05, 0.1)
MAX_DROP_POINTS = 1.0


def activation_bytes(model: EarlyExitNet) -> list[int]:
    """Bytes the device sends when it offloads at each exit: the activations in fp16 plus the
    recursion's carry (log p, fp32)."""
    cfg = model.cfg
    x = torch.zeros(1, cfg.in_chans, cfg.image_size, cfg.image_size)
    out, prev = [], None
    with torch.no_grad():
        for j in range(model.num_exits):
            x, prev = model.segment(j, x, prev)
            out.append(x.numel() * 2 + prev.numel() * 4)
    return out


@torch.no_grad()
def record_traces(model: EarlyExitNet, data: Dataset, batch_size: int = 256) -> ExitTraces:
    """Runs every sample through every exit and records confidence, margin and prediction."""
    model.eval()
    conf, margin, pred = [], [], []
    for x, _ in data.batches(batch_size):
        probs = torch.stack(model(torch.from_numpy(x)), dim=1).exp()  # (B, E, C)
        top2 = probs.topk(2, dim=-1).values
        conf.append(top2[..., 0].numpy())
        margin.append((top2[..., 0] - top2[..., 1]).numpy())
        pred.append(probs.argmax(-1).numpy())
    return ExitTraces(
        conf=np.concatenate(conf).astype(np.float32),
        margin=np.concatenate(margin).astype(np.float32),
        pred=np.concatenate(pred).astype(np.int64),
        labels=data.labels.astype(np.int64),
        exit_blocks=np.array(model.exits, dtype=np.int64),
        segment_flops=np.array(count_segment_flops(model), dtype=np.int64),
        device_exits=np.array(model.cfg.device_exits, dtype=np.int64),
        activation_bytes=np.array(activation_bytes(model), dtype=np.int64),
    )


def regime_summary(traces: ExitTraces) -> dict[str, Any]:
    """Exit accuracies, the no-offloading accuracy-vs-compute curve and its area."""
    curve = early_exit_curve(traces, CURVE_TAUS)
    return {
        "final_accuracy": float(traces.final_correct.mean()),
        "auc": area_under_curve(curve, float(traces.device_flops()[-1])),
        "exit_accuracy": traces.correct.mean(axis=0).tolist(),
        "curve": curve,
    }


def rule_sweep(traces: ExitTraces) -> list[dict[str, Any]]:
    """Both device rules over their threshold grids."""
    rows = [
        {"rule": "threshold", "threshold": tau, **apply_rule(traces, tau).summary(traces)}
        for tau in THRESHOLDS
    ]
    for tau_exit, tau_grow in itertools.product(GROWTH_EXIT, GROWTH_GROW):
        rows.append(
            {
                "rule": "growth",
                "threshold": {"tau_exit": tau_exit, "tau_grow": tau_grow},
                **apply_rule(traces, tau_exit, tau_grow).summary(traces),
            }
        )
    return rows


def choose_operating_point(
    val: ExitTraces, rule: str, max_drop_points: float = MAX_DROP_POINTS
) -> dict[str, Any]:
    """The sweep point of ``rule`` answering most samples on the device while staying within
    ``max_drop_points`` of the final exit's accuracy, on the validation traces."""
    floor = val.final_correct.mean() - max_drop_points / 100
    sweep = [r for r in rule_sweep(val) if r["rule"] == rule]
    rows = [r for r in sweep if r["accuracy"] >= floor - 1e-9]
    if not rows:  # nothing qualifies: the most accurate point
        rows = [max(sweep, key=lambda r: r["accuracy"])]
    return max(rows, key=lambda r: (r["device_fraction"], r["accuracy"]))


def evaluate(
    models: dict[str, EarlyExitNet],
    default: str,
    val: Dataset,
    test: Dataset,
    trace_placements: int = 1,
) -> tuple[dict[str, Any], dict[str, ExitTraces]]:
    """Regimes compared on ``test``; rules of the ``default`` model chosen on ``val``, reported on
    ``test``. Returns the result and the default model's traces per split, recorded over
    ``trace_placements`` placements of each split's digits (the RL policy's data)."""
    result: dict[str, Any] = {"dataset": test.name, "split": "test", "n_test": len(test)}
    traces = {name: record_traces(m, test) for name, m in models.items()}
    result["regimes"] = {name: regime_summary(t) for name, t in traces.items()}
    default_traces = {
        split: record_traces(models[default], data.placements(trace_placements))
        for split, data in (("val", val), ("test", test))
    }
    t = traces[default]
    result["default"] = default
    result["exit_blocks"] = t.exit_blocks.tolist()
    result["device_exits"] = t.device_exits.tolist()
    result["segment_flops"] = t.segment_flops.tolist()
    result["full_flops"] = int(t.device_flops()[-1])
    result["activation_bytes"] = t.activation_bytes.tolist()
    result["rules"] = rule_sweep(t)
    chosen = {}
    val_traces = record_traces(models[default], val)
    for rule in ("threshold", "growth"):
        point = choose_operating_point(val_traces, rule)
        th = point["threshold"]
        args = (th["tau_exit"], th["tau_grow"]) if rule == "growth" else (th,)
        chosen[rule] = {
            "threshold": th,
            "val": {k: point[k] for k in ("accuracy", "device_fraction")},
            **apply_rule(t, *args).summary(t),
            "drop_points": 100 * (t.final_correct.mean() - apply_rule(t, *args).correct.mean()),
        }
    result["chosen"] = chosen
    plain = f"{default}-plain"
    if plain in result["regimes"]:
        result["recursive_vs_plain"] = recursive_vs_plain(
            result["regimes"][default]["curve"], result["regimes"][plain]["curve"], t
        )
    return result, default_traces


def recursive_vs_plain(
    recursive: list[dict[str, float]], plain: list[dict[str, float]], traces: ExitTraces
) -> list[dict[str, float]]:
    """Best accuracy of each variant at the compute of each exit (equal average compute)."""
    return [
        {
            "mean_flops": float(f),
            "recursive": accuracy_at_flops(recursive, float(f) * 1.0001),
            "plain": accuracy_at_flops(plain, float(f) * 1.0001),
        }
        for f in traces.device_flops()
    ]


def format_table(result: dict[str, Any]) -> str:
    full = result["full_flops"]
    lines = [
        f"{result['dataset']} {result['split']} split (n={result['n_test']}); full model "
        f"{full / 1e6:.2f} MFLOPs/image; exits after blocks {result['exit_blocks']}, "
        f"device holds exits {result['device_exits']}",
        "",
        f"{'regime':<12} {'final acc %':>11} {'AUC':>7}  exit accuracies "
        "(± half the 95 % interval of the final one)",
    ]
    n = result["n_test"]
    for name, r in result["regimes"].items():
        accs = " ".join(f"{a * 100:5.1f}" for a in r["exit_accuracy"])
        lines.append(f"{name:<12} {pm(r['final_accuracy'], n):>11} {r['auc'] * 100:6.2f}  {accs}")
    if "recursive_vs_plain" in result:
        lines += ["", f"{result['default']}, equal compute (MFLOPs)   recursive   plain"]
        for row in result["recursive_vs_plain"]:
            lines.append(
                f"{row['mean_flops'] / 1e6:>33.2f} {row['recursive'] * 100:10.1f}% {row['plain'] * 100:6.1f}%"
            )
    lines += [
        "",
        f"device rules on the {result['default']} model (chosen on validation, "
        f"<= {MAX_DROP_POINTS:g} point below the final exit there):",
        f"{'rule':<10} {'threshold':<32} {'acc':>6} {'drop':>6} {'on device':>9} {'MFLOPs':>7} {'bytes':>7}",
    ]
    for rule, c in result["chosen"].items():
        lines.append(
            f"{rule:<10} {str(c['threshold']):<32} {c['accuracy'] * 100:5.1f}% {c['drop_points']:5.1f}p"
            f" {c['device_fraction'] * 100:8.1f}% {c['mean_flops'] / 1e6:7.2f} {c['mean_bytes']:7.0f}"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy against device compute: each regime's early-exit curve, and the rule sweeps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = result["full_flops"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, r in result["regimes"].items():
        pts = sorted(r["curve"], key=lambda p: p["mean_flops"])
        ax1.plot(
            [p["mean_flops"] / full for p in pts],
            [p["accuracy"] * 100 for p in pts],
            ".-",
            label=f"{name} (AUC {r['auc'] * 100:.1f})",
        )
    ax1.set(
        xlabel="mean compute / full model",
        ylabel="accuracy (%)",
        title="Multi-exit accuracy vs compute (no offloading)",
    )
    ax1.legend()
    points = None
    for rule, marker in (("threshold", "o"), ("growth", "x")):
        rows = [r for r in result["rules"] if r["rule"] == rule]
        points = ax2.scatter(
            [r["mean_flops"] / full for r in rows],
            [r["accuracy"] * 100 for r in rows],
            c=[r["device_fraction"] for r in rows],
            cmap="viridis",
            vmin=0,
            vmax=1,
            marker=marker,
            label=rule,
        )
    final = result["regimes"][result["default"]]["final_accuracy"] * 100
    ax2.axhline(final, color="grey", ls="--", lw=1, label="final exit")
    ax2.axhline(final - MAX_DROP_POINTS, color="grey", ls=":", lw=1, label="-1 point")
    ax2.set(
        xlabel="mean device compute / full model",
        ylabel="accuracy (%)",
        title="Device rules: accuracy against device compute",
    )
    ax2.legend(loc="lower right")
    if points is not None:
        fig.colorbar(points, ax=ax2, label="share answered on the device")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
