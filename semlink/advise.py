"""``semlink advise``: what to run on one device class, link, frame rate and deadline, read from a
regime map (``semlink bench regimes``' JSON).

The map's cell for the deployment (the nearest frame rate and deadline of its grid when the exact
ones were not run; the device class and the link must be in it) ranks every strategy by on-time
accuracy: each fixed option, each adaptive controller, the oracle for reference. Measured figures
(real processes under the class's CPU quota) stand beside the predicted ones where the map ran
the cell; the advice says which it rests on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class AdviseConfig:
    map: str = "runs/bench-regimes/regimes.json"
    """A regime map: the JSON ``semlink bench regimes`` writes (``--out``/regimes.json, or ``--json``)."""
    profile: str = "pi-zero-2"
    """The device class (a profile of the map)."""
    link: str = "1mbit"
    """The link as the map names it (a rate like 1mbit, a synthetic trace, trace:FILE)."""
    fps: float = 15.0
    deadline_ms: float = 100.0
    model: str | None = None
    """The model (default: the map's headline model)."""
    top: int = 5
    """Strategies listed."""

    def __post_init__(self) -> None:
        for name in ("fps", "deadline_ms"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                flag = name.replace("_", "-")
                raise ValueError(f"--{flag} must be a positive number, got {value!r}")
        if self.top < 1:
            raise ValueError(f"--top must be at least 1, got {self.top}")


def load_map(path: str | Path) -> dict[str, Any]:
    """A regime map, checked for the keys advice reads."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"no regime map at {p}: run `semlink bench regimes --json {p}` first (or pass --map)"
        )
    doc = json.loads(p.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("cells"), list):
        raise ValueError(f"{p} is not a regime map (no 'cells' list)")
    return doc


def find_cell(doc: dict[str, Any], cfg: AdviseConfig) -> dict[str, Any]:
    """The map's cell for ``cfg``: its model, class and link exactly, the nearest frame rate,
    then the nearest deadline (ratios: 15 frames/s is as far from 30 as from 7.5)."""
    model = cfg.model or doc.get("headline", {}).get("model")
    cells = [c for c in doc["cells"] if c["model"] == model]
    if not cells:
        models = sorted({c["model"] for c in doc["cells"]})
        raise ValueError(f"the map has no cells of model {model!r}; it has {models}")
    for key, value in (("profile", cfg.profile), ("link", cfg.link)):
        have = sorted({str(c[key]) for c in cells})
        if value not in have:
            raise ValueError(f"the map has no {key} {value!r}; it has {have}")
        cells = [c for c in cells if c[key] == value]

    def distance(c: dict[str, Any]) -> tuple[float, float]:
        return (
            abs(math.log(c["fps"] / cfg.fps)),
            abs(math.log(c["deadline_ms"] / cfg.deadline_ms)),
        )

    return min(cells, key=distance)


def _figure(s: dict[str, Any]) -> tuple[float, list[float], int, bool]:
    """A strategy's on-time accuracy, interval and n: measured where the cell was run, else
    predicted."""
    m = s.get("measured")
    if m:
        return m["on_time"], m.get("ci95", [m["on_time"]] * 2), m.get("n", 0), True
    return s["on_time"], s["ci95"], s["n"], False


def _bytes_up(s: dict[str, Any]) -> float:
    """Bytes up a frame: measured where the cell was run, else predicted."""
    return float((s.get("measured") or s)["bytes_up"])


def advise(doc: dict[str, Any], cfg: AdviseConfig) -> dict[str, Any]:
    """The cell, its strategies ranked (best first, the oracle apart) and the advice."""
    cell = find_cell(doc, cfg)
    measured = bool(cell.get("measured"))
    ranked = []
    for name, s in cell["strategies"].items():
        if s["kind"] == "oracle":
            continue
        on_time, ci, n, was_measured = _figure(s)
        if measured and not was_measured:
            continue  # in a measured cell, rank what was measured
        ranked.append(
            {
                "strategy": name,
                "kind": s["kind"],
                "on_time": on_time,
                "ci95": ci,
                "n": n,
                "measured": was_measured,
                "bytes_up": _bytes_up(s),
                "energy_mj": s.get("energy_mj"),  # the map's energy model, from predicted CPU
            }
        )
    if not ranked:
        raise ValueError(
            f"the map's cell {cell['profile']}/{cell['link']}/{cell['fps']:g}/"
            f"{cell['deadline_ms']:g} holds no strategy to rank: rerun `semlink bench regimes`"
        )
    ranked.sort(key=lambda r: -r["on_time"])
    oracle = next((s for s in cell["strategies"].values() if s["kind"] == "oracle"), None)
    best = ranked[0]
    ties = [r["strategy"] for r in ranked[1:] if r["ci95"][1] >= best["ci95"][0]]
    return {
        "cell": {k: cell[k] for k in ("model", "profile", "link", "fps", "deadline_ms")},
        "measured": measured,
        "ranked": ranked[: cfg.top],
        "best": best["strategy"],
        "overlapping": ties,
        "oracle_on_time": oracle["on_time"] if oracle else None,
    }


def format_advice(a: dict[str, Any], cfg: AdviseConfig) -> str:
    """The advice as text."""
    c = a["cell"]
    asked = (cfg.fps, cfg.deadline_ms) != (c["fps"], c["deadline_ms"])
    where = (
        f"{c['model']} on {c['profile']}, link {c['link']}, {c['fps']:g} frames/s, "
        f"deadline {c['deadline_ms']:g} ms"
    )
    basis = "measured in real processes" if a["measured"] else "predicted by the simulator"
    lines = [
        f"{where} ({basis}"
        + (
            f"; the map's nearest cell to {cfg.fps:g} frames/s, {cfg.deadline_ms:g} ms"
            if asked
            else ""
        )
        + ")",
        f"{'strategy':<22} {'kind':<9} {'on time (95 % CI)':>24} {'bytes up':>9} {'energy mJ':>10}",
    ]
    for r in a["ranked"]:
        ci = f"{100 * r['on_time']:.1f} % [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"
        energy = "-" if r["energy_mj"] is None else f"{r['energy_mj']:.1f}"
        lines.append(
            f"{r['strategy']:<22} {r['kind']:<9} {ci:>24} {r['bytes_up']:>9.0f} {energy:>10}"
        )
    advice = f"run {a['best']}"
    if a["overlapping"]:
        advice += f" (its interval overlaps {', '.join(a['overlapping'][:4])}: a tie)"
    if a["oracle_on_time"] is not None:
        advice += f"; in hindsight the best per frame reaches {100 * a['oracle_on_time']:.1f} %"
    lines.append(advice)
    lines.append("(energy: the map's model, CPU at the class's power plus the radio; not measured)")
    return "\n".join(lines)
