"""The targets ``semlink bench compare`` judges each semlink controller by: against the best JPEG
upload on every target link, within the deadline at the slowest rate, and against the device
alone; every accuracy difference paired on the same images."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from semlink.bench.compare.config import SYSTEMS
from semlink.models.stats import paired_bootstrap

TARGET_P50_RATIO = 0.5  # of the best JPEG upload's p50
TARGET_BYTES_RATIO = 0.25  # of the best JPEG upload's uplink bytes
TARGET_LOSS_POINTS = 1.0  # accuracy a controller may lose against it (and what "best" forgives)
TARGET_WITHIN_DEADLINE = 0.99  # share answered within the deadline at the slowest rate
TARGET_LOCAL_POINTS = 5.0  # accuracy above the device alone, at equal or better p95


def points(x: float) -> str:
    """``1 point``, ``5 points``."""
    return f"{x:g} point{'' if x == 1 else 's'}"


def _share(x: float) -> str:
    """``1/2``: a ratio as the fraction a reader says."""
    return str(Fraction(x).limit_denominator(100))


def jpeg_target(link: str) -> str:
    """What a controller must do against the best JPEG upload on ``link``, in words."""
    return (
        f"{link}: p50 ≤ {_share(TARGET_P50_RATIO)} and uplink bytes ≤ "
        f"{_share(TARGET_BYTES_RATIO)} of the best JPEG upload's, at ≤ "
        f"{points(TARGET_LOSS_POINTS)} accuracy loss"
    )


def rows_on(report: dict[str, Any], link: str) -> dict[str, dict[str, Any]]:
    """The rows measured on ``link``, by system; the device-alone rows (no link) join each."""
    return {r["system"]: r for r in report["results"] if r["link"] in (link, "device alone")}


def _accuracy(report: dict[str, Any], row: dict[str, Any]) -> float:
    """A system's accuracy on the whole split where measured, else on the row's own requests."""
    whole = report.get("whole_split", {}).get(row["system"])
    return row["accuracy"] if whole is None else whole["accuracy"]


def best_jpeg(report: dict[str, Any], link: str) -> str | None:
    """The JPEG upload a practitioner would pick on ``link``: the fastest (p50) of those whose
    accuracy is within :data:`TARGET_LOSS_POINTS` of the most accurate JPEG upload (whole split where measured,
    else the link's own requests)."""
    rows = rows_on(report, link)
    jpeg = {s.name: rows[s.name] for s in SYSTEMS if s.jpeg and s.model == "vit" and s.name in rows}
    if not jpeg:
        return None
    acc = {s: _accuracy(report, r) for s, r in jpeg.items()}
    good = [s for s in jpeg if acc[s] >= max(acc.values()) - TARGET_LOSS_POINTS / 100 - 1e-12]
    return min(good, key=lambda s: jpeg[s]["p50_ms"])


def best_local(report: dict[str, Any]) -> str | None:
    """The best model that fits the device profile alone: the most accurate device-alone
    system whose p95 is within the deadline."""
    rows = [r for r in report["results"] if r["link"] == "device alone"]
    fits = [r for r in rows if r["p95_ms"] <= report["deadline_ms"]]
    if not fits:
        return None
    return max(fits, key=lambda r: _accuracy(report, r))["system"]


def _paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a``'s accuracy minus ``b``'s in points on the images both were sent (the same images
    in the same order), with the paired bootstrap interval."""
    m = min(len(a["correct"]), len(b["correct"]))
    return paired_bootstrap(a["correct"][:m], b["correct"][:m]).as_dict()


def _paired_whole(report: dict[str, Any], a: str, b: str) -> dict[str, Any] | None:
    """``a`` minus ``b`` on the whole split, paired, where both answered it (else ``None``).
    Beside a target, not its judge: the whole-split twins ran on one link without the quota, so
    a controller that adapts to the link (Lyapunov, RL) made other choices there."""
    whole = report.get("whole_split", {})
    if a not in whole or b not in whole:
        return None
    return _paired(whole[a], whole[b])


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for each semlink controller: against the best JPEG upload on every
    target link, within the deadline at the slowest rate, and against the device alone."""
    out: list[dict[str, Any]] = []
    controllers = [s.name for s in SYSTEMS if s.controller]
    for link in (lk["name"] for lk in report["links"] if lk["target"]):
        rows, jpeg = rows_on(report, link), best_jpeg(report, link)
        if jpeg is None:
            continue
        theirs = rows[jpeg]
        for s in (s for s in controllers if s in rows):
            mine = rows[s]
            diff = _paired(mine, theirs)
            ratio = mine["p50_ms"] / theirs["p50_ms"]
            bytes_ratio = mine["bytes_up"] / max(theirs["bytes_up"], 1.0)
            out.append(
                {
                    "target": jpeg_target(link),
                    "kind": "jpeg",
                    "link": link,
                    "system": s,
                    "against": jpeg,
                    "p50_ratio": ratio,
                    "bytes_ratio": bytes_ratio,
                    "accuracy_diff": diff,
                    "whole_split_diff": _paired_whole(report, s, jpeg),
                    "met": ratio <= TARGET_P50_RATIO + 1e-9
                    and bytes_ratio <= TARGET_BYTES_RATIO + 1e-9
                    and diff["diff"] >= -TARGET_LOSS_POINTS - 1e-9,
                }
            )
    rated = [lk for lk in report["links"] if lk.get("rate_mbit") is not None]
    if rated:
        low = min(rated, key=lambda lk: lk["rate_mbit"])["name"]
        rows = rows_on(report, low)
        for s in (s for s in controllers if s in rows):
            within = rows[s]["within_deadline"]
            out.append(
                {
                    "target": f"{low}: ≥ {100 * TARGET_WITHIN_DEADLINE:g} % answered within "
                    f"{report['deadline_ms']:g} ms",
                    "kind": "deadline",
                    "link": low,
                    "system": s,
                    "within_deadline": within,
                    "met": within >= TARGET_WITHIN_DEADLINE,
                }
            )
    local = best_local(report)
    if local is not None:
        for link in (lk["name"] for lk in report["links"] if lk["target"]):
            rows = rows_on(report, link)
            for s in (s for s in controllers if s in rows):
                diff = _paired(rows[s], rows[local])
                out.append(
                    {
                        "target": f"{link}: ≥ {points(TARGET_LOCAL_POINTS)} above the device "
                        "alone at equal or better p95",
                        "kind": "local",
                        "link": link,
                        "system": s,
                        "against": local,
                        "accuracy_diff": diff,
                        "whole_split_diff": _paired_whole(report, s, local),
                        "p95_ms": rows[s]["p95_ms"],
                        "local_p95_ms": rows[local]["p95_ms"],
                        "met": diff["diff"] >= TARGET_LOCAL_POINTS - 1e-9
                        and rows[s]["p95_ms"] <= rows[local]["p95_ms"] + 1e-9,
                    }
                )
    return out
