"""The report of ``semlink bench compare``: Markdown with its setup, a table per link, the whole
split and the targets; and its plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from semlink.bench.compare.config import SYSTEMS
from semlink.bench.compare.targets import TARGET_LOSS_POINTS, points, rows_on
from semlink.models.stats import wilson


def _ci(p: float, n: int) -> str:
    """``p`` in percent with its 95 % Wilson interval over ``n``."""
    lo, hi = wilson(p, n)
    return f"{100 * p:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] (n={n})"


def _diff(d: dict[str, Any]) -> str:
    """A paired difference in points with its interval."""
    text = f"{d['diff']:+.1f} points [{d['lo']:+.1f}, {d['hi']:+.1f}], n={d['n']}"
    return text + (", a tie" if d["tie"] else "")


def _accuracy_detail(t: dict[str, Any]) -> str:
    """A target's paired accuracy difference on the link's requests, and on the whole split
    beside it where both systems answered that."""
    text = f"accuracy {_diff(t['accuracy_diff'])}"
    whole = t.get("whole_split_diff")
    return text if whole is None else f"{text}; on the whole split {_diff(whole)}"


def _snr(values: list[float]) -> str:
    """The SNR the links reported, as the prose says it: ``20 dB`` or ``5 to 20 dB``."""
    if not values:
        return "not reported: no link row"
    lo, hi = min(values), max(values)
    return f"{lo:g} dB" if lo == hi else f"{lo:g} to {hi:g} dB"


def setup_lines(report: dict[str, Any]) -> list[str]:
    """The report's opening: the machine, the setup and the assumptions, every figure from the
    settings the run used (``report["setup"]``)."""
    m, setup = report["machine"], report["setup"]
    fixed, lyapunov, rl = setup["fixed"], setup["lyapunov"], setup["rl"]
    snrs = sorted(
        {r.get("snr_db") for r in report["results"] if r["system"] == lyapunov["system"]} - {None}
    )
    share = lyapunov["latency_budget_share"]
    policy = f"under the `{rl['costs_profile']}` profile" if rl["costs_profile"] else "unprofiled"
    return [
        f"machine: {m['processor']}, {m['cpus']} CPUs, {m['platform']}, Python {m['python']}",
        f"dataset: {report['dataset']} (test split); deadline {report['deadline_ms']:g} ms; "
        f"every hop across the link on {report['transport']}",
        f"device profile: `{report['device_profile']}`: every semlink device, the device-alone rows "
        "and the camera process that sends the JPEG uploads run under a real cgroup CPU quota "
        "(measured, not a multiplier); the JPEGs come from the camera's encoder (free here) and the "
        "servers run at the machine's speed",
        f"links: constant rates with {setup['delay_ms']:g} ms each way; traces shape the uplink "
        "(Mahimahi, wrapping; replayed from their start when each system's measured requests "
        f"begin, after its warm-up) over a constant {setup['trace_downlink']} downlink; "
        "bytes are what the link carried, framing and TLS included",
        "simulated, not measured: the Lyapunov row's JSCC symbols cross the link as bytes over a "
        "lossless link and the server simulates the AWGN channel at the SNR the link reports "
        f"({_snr(snrs)}); no energy figure enters this benchmark",
        f"controllers: fixed sends {fixed['tokens_sent']} of {fixed['tokens']} tokens "
        f"(budget {fixed['budget']:g}) in {fixed['token_format']}; Lyapunov holds a channel "
        f"budget of {lyapunov['channel_budget']:g} channel uses per value and a latency budget "
        f"of {100 * share:g} % of the deadline ({share * report['deadline_ms']:g} ms); RL is the "
        f"shipped policy (its costs measured {policy}); the device alone runs the whole model, "
        "or the early-exit network's device blocks, never offloading",
    ]


def _link_tables(report: dict[str, Any]) -> list[str]:
    """One table per link: every system's row measured on it (the device-alone rows in each)."""
    lines = []
    head = (
        "| system | accuracy (95 % CI) | on time (95 % CI) | bytes up / down "
        "| p50 / p95 / p99 ms | ≤ deadline | offloaded | degraded |"
    )
    for link in (lk["name"] for lk in report["links"]):
        lines += [f"**{link}**", "", head, "|" + " --- |" * 8]
        for r in rows_on(report, link).values():
            offl = f"{100 * r['offloaded']:.0f} %" if r["link"] != "device alone" else "alone"
            on_time = _ci(r["on_time"], r["requests"]) if "on_time" in r else "-"
            lines.append(
                f"| {r['system']} | {_ci(r['accuracy'], r['requests'])} | {on_time} "
                f"| {r['bytes_up']:.0f} / {r['bytes_down']:.0f} "
                f"| {r['p50_ms']:.1f} / {r['p95_ms']:.1f} / {r['p99_ms']:.1f} "
                f"| {100 * r['within_deadline']:.0f} % | {offl} | {r['degraded']} |"
            )
        lines.append("")
    return lines


def _whole_split_table(report: dict[str, Any]) -> list[str]:
    """Each system's accuracy on the whole test split and its throughput, where measured."""
    if not report.get("whole_split"):
        return []
    frames = report["setup"].get("whole_split_frames")
    # a bound at or above the split's size answered the whole split
    answered = max(w["requests"] for w in report["whole_split"].values())
    head = (
        f"Test split's first {frames} frames"
        if frames is not None and frames <= answered
        else "Whole test split"
    )
    lines = [
        f"**{head}** (each system once, on the link named, requests "
        f"{report['setup']['in_flight']} at a time)",
        "",
        "| system | link | device profile | accuracy (95 % CI) | req/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s, w in report["whole_split"].items():
        lines.append(
            f"| {s} | {w['link']} | {w.get('device_profile') or '(no device)'} "
            f"| {_ci(w['accuracy'], w['requests'])} | {w['throughput_rps']:.1f} |"
        )
    return [*lines, ""]


def _target_lines(report: dict[str, Any]) -> list[str]:
    """How the targets are judged, then one line per target: met or not, and the figures."""
    lines = [
        "targets (differences paired on the same images: the link's requests judge; the whole "
        "split's, where both answered it, stand beside them, measured by twins on one link "
        "without the quota, so an adaptive controller chose differently there; the best JPEG "
        "upload is the fastest whose whole-split accuracy is within "
        f"{points(TARGET_LOSS_POINTS)} of the most accurate one; the device alone is the most "
        "accurate device-alone row whose p95 is within the deadline):"
    ]
    for t in report["targets"]:
        if t["kind"] == "jpeg":
            detail = (
                f"vs {t['against']}: p50 {t['p50_ratio']:.2f}×, bytes up {t['bytes_ratio']:.2f}×, "
                f"{_accuracy_detail(t)}"
            )
        elif t["kind"] == "deadline":
            detail = f"{100 * t['within_deadline']:.1f} % within the deadline"
        else:
            detail = (
                f"vs {t['against']}: {_accuracy_detail(t)}, "
                f"p95 {t['p95_ms']:.1f} vs {t['local_p95_ms']:.1f} ms"
            )
        lines.append(f"- {'✓' if t['met'] else '✗'} {t['system']}: {t['target']} ({detail})")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The report as Markdown: setup and assumptions, a table per link, the whole-split
    accuracies, the targets."""
    return "\n".join(
        [
            *setup_lines(report),
            "",
            *_link_tables(report),
            *_whole_split_table(report),
            *_target_lines(report),
        ]
    )


def plot(report: dict[str, Any], path: Path) -> None:
    """p50 latency and uplink bytes per request of every system on every link."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    links = [lk["name"] for lk in report["links"]]
    x = np.arange(len(links))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for s in SYSTEMS:
        rows = [rows_on(report, link).get(s.name) for link in links]
        if not any(rows):
            continue
        style = "-o" if s.controller else ("--s" if s.jpeg else ":^")
        p50 = [r["p50_ms"] if r else np.nan for r in rows]
        ax1.plot(x, p50, style, label=s.name)
        if s.kind != "local":
            ax2.plot(x, [max(r["bytes_up"], 1) if r else np.nan for r in rows], style, label=s.name)
    ax1.axhline(report["deadline_ms"], color="grey", lw=0.8, ls=":", label="deadline")
    for ax, title in (
        (ax1, "p50 latency (ms, log scale)"),
        (ax2, "bytes up per request (log scale)"),
    ):
        ax.set(yscale="log", xlabel="link", title=title)
        ax.set_xticks(x, links, rotation=25, ha="right", fontsize=8)
        ax.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
