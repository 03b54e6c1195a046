"""``semlink bench split``: split learning with ADC against its baselines at equal bytes, and
ALaST against full fine-tuning, every run measured here (docs/methods.md#adc, docs/methods.md#alast).

Every run fine-tunes the same pretrained model (by default the shipped scene-vit) to the same
shifted task (by default digits-scene-shifted: smaller, fainter digits in more clutter) for the
same number of epochs from the same start; accuracy is on the test split with the whole model
(compression is a training matter), with n and a 95 % interval, and the targets' differences
are paired over the same test frames. Bytes are everything that crossed the split boundary
during training, both ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semlink.bench import write_figures
from semlink.models.progress import progress_bar
from semlink.models.stats import paired_bootstrap, pm
from semlink.models.train_split import SCENE_PRETRAINED

XIS = (0.05, 0.1, 0.2, 0.3, 0.5)
BASELINES = ("top-k", "random-k", "quantise")


@dataclass
class SplitBenchConfig:
    epochs: int = 4
    finetune_epochs: int = 6
    xis: tuple[float, ...] = XIS
    k: int = 2  # ALaST: trainable blocks per step
    dataset: str = "digits-scene-shifted"
    """the task every run adapts to (digits-shifted with --pretrained zoo/digits-vit/1/...)"""
    pretrained: str = str(SCENE_PRETRAINED)
    """the checkpoint every run starts from"""
    max_steps: int | None = None  # smoke runs
    out: str = "runs/bench-split"


def _figures(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "xi": r["xi"],
        "accuracy": r["accuracy"],
        "n": r["n"],
        "correct": r["correct"],
        "bytes_up": int(r["bytes_up"]),
        "bytes_down": int(r["bytes_down"]),
        "seconds": r["seconds"],
    }


def run(cfg: SplitBenchConfig) -> dict[str, Any]:
    from semlink.models.alast import FinetuneConfig, finetune
    from semlink.models.train_split import SplitConfig, train_split

    def split(method: str, xi: float) -> dict[str, Any]:
        c = SplitConfig(
            method,
            xi,
            epochs=cfg.epochs,
            dataset=cfg.dataset,
            pretrained=cfg.pretrained,
            max_steps=cfg.max_steps,
            progress=False,
        )
        return train_split(c)

    runs = [("uncompressed", 1.0)] + [(m, xi) for xi in cfg.xis for m in ("adc", *BASELINES)]
    done = {}
    for method, xi in progress_bar(runs, desc="split learning runs", unit="run"):
        done[(method, xi)] = split(method, xi)
    unc = done[("uncompressed", 1.0)]
    ft = {}
    for alast in progress_bar((False, True), desc="fine-tuning runs", unit="run"):
        ft[alast] = finetune(
            FinetuneConfig(
                alast=alast,
                k=cfg.k,
                epochs=cfg.finetune_epochs,
                dataset=cfg.dataset,
                pretrained=cfg.pretrained,
                max_steps=cfg.max_steps,
                progress=False,
            )
        )
    full, alast = ft[False], ft[True]
    result = {
        "adc": [_figures(done[("adc", xi)]) for xi in cfg.xis],
        "baselines": [
            {"method": m, **_figures(done[(m, xi)])} for xi in cfg.xis for m in BASELINES
        ],
        "dataset": cfg.dataset,
        "pretrained": cfg.pretrained,
        "uncompressed_accuracy": unc["accuracy"],
        "uncompressed": _figures(unc),
        "accuracy_before_finetuning": unc["accuracy_before"],
        "epochs": cfg.epochs,
        "alast": {
            "speedup": full["epoch_seconds"] / alast["epoch_seconds"],
            "flops_ratio": full["step_flops"] / alast["step_flops"],
            "memory_ratio": full["step_memory_bytes"] / alast["step_memory_bytes"],
            "accuracy_delta_points": 100 * (alast["accuracy"] - full["accuracy"]),
            "k": cfg.k,
            "epochs": cfg.finetune_epochs,
            "full": full,
            "alast": alast,
        },
    }
    result["targets"] = targets(result)
    plot(result, Path(cfg.out) / "split.png")
    return result


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The claims of docs/methods.md#adc and docs/methods.md#alast as targets; accuracy differences paired over the test frames."""
    out = []
    at = {a["xi"]: a for a in r["adc"]}
    if 0.1 in at:
        d = paired_bootstrap(at[0.1]["correct"], r["uncompressed"]["correct"])
        out.append(
            {
                "target": "ADC at ξ = 0.1 within 2 points of uncompressed",
                "value": str(d),
                "diff": d.as_dict(),
                "met": d.diff >= -2.0,
            }
        )
    beaten = [
        b for b in r["baselines"] if b["xi"] in at and b["accuracy"] >= at[b["xi"]]["accuracy"]
    ]
    out.append(
        {
            "target": "ADC above every baseline at the same ξ",
            "value": [f"{b['method']} at ξ={b['xi']:g}" for b in beaten],
            "met": not beaten,
        }
    )
    a = r["alast"]
    out.append(
        {
            "target": "ALaST ≥ 1.3× faster per epoch",
            "value": a["speedup"],
            "met": a["speedup"] >= 1.3,
        }
    )
    out.append(
        {
            "target": "ALaST ≥ 1.5× fewer FLOPs",
            "value": a["flops_ratio"],
            "met": a["flops_ratio"] >= 1.5,
        }
    )
    d = paired_bootstrap(a["alast"]["correct"], a["full"]["correct"])
    out.append(
        {
            "target": "ALaST within 1 point of full fine-tuning",
            "value": str(d),
            "diff": d.as_dict(),
            "met": d.diff >= -1.0,
        }
    )
    return out


def format_report(r: dict[str, Any]) -> str:
    mb = 1e6
    u = r["uncompressed"]
    start = Path(r.get("pretrained", "zoo/digits-vit/1/checkpoint.pt")).parent.parent.name
    task = r.get("dataset", "digits-shifted")
    lines = [
        f"split learning, {r['epochs']} epochs from the shipped {start} "
        f"({pm(r['accuracy_before_finetuning'], u['n'])} % on {task} before; test split, "
        f"n = {u['n']}, 95 % intervals; device profile: none: device and server halves train "
        "in one process at this machine's full speed):",
        "",
        f"uncompressed: {pm(u['accuracy'], u['n'])} %, {u['bytes_up'] / mb:.1f} MB up, "
        f"{u['bytes_down'] / mb:.1f} MB down",
        "",
        "| ξ | ADC | top-k | random-k | quantise | bytes up+down (ADC) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for a in r["adc"]:
        base = {b["method"]: b for b in r["baselines"] if b["xi"] == a["xi"]}
        cells = [
            f"{pm(base[m]['accuracy'], base[m]['n'])} % "
            f"({(base[m]['bytes_up'] + base[m]['bytes_down']) / mb:.1f} MB)"
            for m in BASELINES
        ]
        lines.append(
            f"| {a['xi']:g} | {pm(a['accuracy'], a['n'])} % | {' | '.join(cells)} "
            f"| {(a['bytes_up'] + a['bytes_down']) / mb:.1f} MB |"
        )
    al = r["alast"]
    f, s = al["full"], al["alast"]
    lines += [
        "",
        f"fine-tuning, {al['epochs']} epochs: full vs ALaST (K = {al['k']})",
        "",
        "| | accuracy | s / epoch | GFLOPs / step | MB saved for backward / step |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, x in (("full", f), ("ALaST", s)):
        lines.append(
            f"| {name} | {pm(x['accuracy'], x['n'])} % | {x['epoch_seconds']:.2f} "
            f"| {x['step_flops'] / 1e9:.2f} | {x['step_memory_bytes'] / mb:.1f} |"
        )
    lines += [""]
    lines.append(
        f"ALaST: {al['speedup']:.2f}× faster, {al['flops_ratio']:.2f}× fewer FLOPs, "
        f"{al['memory_ratio']:.2f}× less memory, {al['accuracy_delta_points']:+.1f} points"
    )
    lines += ["", "targets:"]
    for t in r["targets"]:
        v = t["value"]
        if isinstance(v, float):
            shown = f"{v:.2f}"
        elif isinstance(v, str):
            shown = v
        else:
            shown = ", ".join(v) or "none better"
        lines.append(f"- {'✓' if t['met'] else '✗'} {t['target']} ({shown})")
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))

    def series(rows: list[dict[str, Any]], label: str, style: str) -> None:
        rows = sorted(rows, key=lambda x: x["xi"])
        total = [(x["bytes_up"] + x["bytes_down"]) / 1e6 for x in rows]
        ax.plot(total, [100 * x["accuracy"] for x in rows], style, label=label)

    series(r["adc"], "ADC", "-o")
    for m, style in zip(BASELINES, ("--s", "--^", "--v"), strict=True):
        series([b for b in r["baselines"] if b["method"] == m], m, style)
    u = r["uncompressed"]
    ax.plot(
        [(u["bytes_up"] + u["bytes_down"]) / 1e6],
        [100 * u["accuracy"]],
        "k*",
        ms=12,
        label="uncompressed",
    )
    ax.set(xscale="log", xlabel="bytes both ways during training (MB)", ylabel="test accuracy (%)")
    ax.set_title(f"split learning on {r.get('dataset', 'digits-shifted')}: accuracy vs bytes")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(cfg: SplitBenchConfig, json_path: str | None) -> int:
    result = run(cfg)
    print(format_report(result))
    print(f"plot: {Path(cfg.out) / 'split.png'}")
    write_figures(json_path, result)
    return 0
