"""``semlink bench regimes``: the regime map. For a device class, a link and a frame rate, what
should run, and does semlink find it by itself? (docs/methods.md#one-decision)

Cells: device class (a calibrated CPU quota, ``semlink bench profile``) x link (constant rates,
10 ms each way, and Mahimahi uplink traces: the real ones in ``../shared/traces/`` when that
folder exists, and synthetic ones always) x frame rate x deadline, for each model (the headline
model, ``scene-xl``, a network the device cannot carry; ``--models scene-xl scene-split`` adds
the one it can). In every cell: every fixed option (each exit, each offload at each split and
budget, int8 or JSCC at each rate, each JPEG quality), every adaptive controller (one
configuration each for the whole grid: the device's defaults, tables from the validation split),
and the oracle in hindsight.

**Predicted** cells: the stream simulator (:mod:`models.stream_sim`) replays each cell on the test
split's recorded outcomes of every option, with the device's stage times measured under the
class's quota, the per-frame overhead of a real device process under it, and the server's
measured times (``bench profile``'s JSON, or measured now). **Measured** cells, a named set: real
processes (server, link emulator shaping the cell's trace or rate, a device under the class's
quota, a camera streaming at the cell's rate); for those the report prints predicted beside
measured on-time accuracy, and the predictor is trusted only where they agree within 2 points.

Energy per frame is a model, not a measurement: the device's CPU time at the class's power
(:data:`CPU_WATTS`) plus the radio while sending by Huang et al., MobiSys 2012 (LTE uplink:
438.39 mW per Mbit/s of rate + 1288.04 mW).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semlink.bench import run_and_report
from semlink.models.progress import progress_bar
from semlink.models.stats import paired_bootstrap, wilson

ADAPTIVE = ("planner", "lyapunov", "rl", "threshold", "growth")
ADAPTING = ("adaptive", "planner")
"""The kinds "the best adaptive controller" is chosen among: semlink's controllers that decide per
frame, the planner (the Edgent-style baseline, kind ``planner``) included."""
RATES = ("0.1mbit", "0.3mbit", "1mbit", "3mbit", "10mbit")
SYNTHETIC = ("gilbert-elliott", "random-walk")
SHARED_TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "traces"
# the device's CPU power while it computes (W): a model, stated beside every energy figure
CPU_WATTS = {"phone": 2.0, "pi4": 3.0, "pi-zero-2": 1.2, "sensor": 0.5, "camera": 1.0, "none": 10.0}
RADIO_MW_PER_MBPS, RADIO_MW = 438.39, 1288.04  # Huang et al., MobiSys 2012, LTE uplink
AGREE_POINTS = 2.0


@dataclass
class RegimesBenchConfig:
    models: list[str] = field(default_factory=lambda: ["scene-xl"])
    """Any-split networks; the first heads the map (``scene-split``, which the device can carry,
    adds its cells at the headline deadline)."""
    profiles: list[str] = field(default_factory=lambda: ["phone", "pi4", "pi-zero-2", "sensor"])
    links: list[str] = field(default_factory=lambda: [*RATES, *SYNTHETIC, "shared"])
    """Constant rates, synthetic traces, ``shared`` (every trace in ../shared/traces) or
    ``trace:FILE``."""
    fps: list[float] = field(default_factory=lambda: [1.0, 5.0, 15.0, 30.0, 60.0])
    deadlines: list[float] = field(default_factory=lambda: [33.0, 100.0, 250.0])
    headline: str = "pi-zero-2,100,15"
    """The headline cell's device class, deadline (ms) and frame rate."""
    seconds: float = 20.0
    """Stream length per cell (at least ``min_frames`` frames)."""
    min_frames: int = 200
    snr_db: float = 20.0
    measured: list[str] = field(default_factory=list)
    """Cells run in real processes, as PROFILE/LINK/FPS/DEADLINE (default: every trace at the
    headline class, rate and deadline, and the cells the targets rely on)."""
    measured_seconds: float = 12.0
    """Stream length per strategy in a measured cell (180 frames at the headline 15 frames/s)."""
    profile_json: list[str] = field(default_factory=list)
    """``semlink bench profile --json`` outputs to predict from, one per model at most (a model
    none of them measured is measured now)."""
    quick: bool = False
    """A few-minute subset on the digits-canvas fixture (digits-split): CI runs it."""
    workers: int = 2
    seed: int = 0
    out: str = "runs/bench-regimes"

    def __post_init__(self) -> None:
        if self.quick:
            self.models = ["digits-split"]
            self.profiles = ["pi4", "pi-zero-2"]  # the sensor's stages alone take minutes
            self.links = ["1mbit", "gilbert-elliott"]
            self.fps = [5.0, 30.0]
            self.deadlines = [100.0]
            self.headline = "pi-zero-2,100,30"
            self.seconds, self.min_frames, self.measured_seconds = 6.0, 40, 3.0
            # one measured cell, the headline's on the trace: the real processes cost most
            self.measured = self.measured or ["pi-zero-2/gilbert-elliott/30/100"]


def links_of(cfg: RegimesBenchConfig) -> list[str]:
    """The link specs of the grid, ``shared`` expanded to the traces there."""
    out = []
    for link in cfg.links:
        if link == "shared":
            out += (
                [f"trace:{p}" for p in sorted(SHARED_TRACES.glob("*.up"))]
                if SHARED_TRACES.is_dir()
                else []
            )
        else:
            out.append(link)
    return out


def energy_mj(
    profile: str, device_ms: np.ndarray, share: float, bytes_up: np.ndarray, rate_bps: float
) -> float:
    """Mean device energy per frame (mJ): CPU time at the class's power plus the radio while
    sending (Huang et al. 2012). A model, not a measurement."""
    cpu_s = device_ms * share / 1000.0  # CPU busy time: wall time under the quota x the share
    mbps = max(rate_bps, 1.0) / 1e6
    send_s = bytes_up * 8.0 / max(rate_bps, 1.0)
    radio_w = (RADIO_MW_PER_MBPS * mbps + RADIO_MW) / 1000.0
    return float(np.mean(cpu_s * CPU_WATTS.get(profile, 1.0) + send_s * radio_w) * 1000.0)


# --- one predicted cell (in a worker process) ---------------------------------------------------


def predict_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Every strategy of one cell, replayed by the simulator (see the module docstring)."""
    from semlink.bench.policy import controllers, schedule_of
    from semlink.device.controller import FixedController
    from semlink.models.option_table import Outcomes
    from semlink.models.stream_sim import DeviceCosts, Simulator, Stream
    from semlink.runtime.pipelines import make_pipeline
    from semlink.runtime.repository import DEFAULT_REPOSITORY, resolve, scan

    mv = resolve(scan(DEFAULT_REPOSITORY), job["model"])
    pipe = make_pipeline(mv)
    costs = DeviceCosts(**job["costs"])
    outcomes = Outcomes.load(mv.path / "outcomes_test.npz")
    fps, deadline = job["fps"], job["deadline_ms"]
    seconds = max(job["seconds"], job["min_frames"] / fps)
    stream = Stream(fps, deadline, seconds, 20.0, job["snr_db"])
    schedule = schedule_of(job["link"], seconds, job["seed"])
    sim = Simulator(
        outcomes, pipe.stages, costs, schedule, stream, job["seed"], charge_decisions=True
    )
    runs = {o.name: sim.run(o.name, FixedController(pipe, o)) for o in pipe.options()}
    fixed = set(runs)
    for name, make in controllers(job["model"], costs).items():
        runs[name] = sim.run(name, make())
    runs["oracle"] = sim.run("oracle", None)
    rate = schedule.average_bps()
    strategies = {}
    for name, run in runs.items():
        s: dict[str, Any] = dict(run.summary(deadline))
        kind = (
            "oracle"
            if name == "oracle"
            else "planner"
            if name == "planner"
            else _kind(name)
            if name in fixed
            else "adaptive"  # every controller the pipeline names (local, growth, ...)
        )
        s.update(
            kind=kind,
            ci95=list(wilson(s["on_time"], s["n"])),
            device_cpu_ms=s["device_cpu_ms"] * job["share"],
            energy_mj=energy_mj(job["profile"], run.device_ms, job["share"], run.bytes_up, rate),
            predicted_on_time=s["on_time"],
        )
        strategies[name] = s
    return {
        **_cell_key(job),
        "measured": False,
        "strategies": strategies,
        "paired": paired(runs, strategies),
    }


def _kind(option: str) -> str:
    """A fixed option's kind: device (an exit), jpeg, or offload (tokens)."""
    if option.startswith("exit"):
        return "device"
    return "jpeg" if option.startswith("jpeg") else "offload"


def _cell_key(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": job["model"],
        "profile": job["profile"],
        "link": job["link_name"],
        "fps": job["fps"],
        "deadline_ms": job["deadline_ms"],
    }


def paired(runs: dict[str, Any], s: dict[str, dict[str, Any]]) -> dict[str, list[float]]:
    """The cell's three paired differences (points, 95 % interval) on its frames."""

    def best(kinds: tuple[str, ...]) -> str | None:
        names = [n for n, r in s.items() if r["kind"] in kinds]
        return max(names, key=lambda n: s[n]["on_time"]) if names else None

    out = {}
    for key, a, b in (
        ("best_adaptive_minus_best_fixed", ADAPTING, ("device", "offload", "jpeg")),
        ("best_offload_minus_best_device", ("offload", "jpeg"), ("device",)),
        ("best_adaptive_minus_best_jpeg", ADAPTING, ("jpeg",)),
    ):
        x, y = best(a), best(b)
        if x and y:
            d = paired_bootstrap(runs[x].on_time, runs[y].on_time)
            out[key] = [d.diff, d.lo, d.hi]
    return out


# --- the measured cells ------------------------------------------------------------------------


def measure_cell(
    model: str,
    profile: str,
    link: str,
    fps: float,
    deadline_ms: float,
    seconds: float,
    strategies: list[str],
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """One cell in real processes: per strategy (an adaptive controller, or a fixed option asked
    per frame of the planner's device) the camera's on-time accuracy and the rest."""
    from semlink.procs import Processes, Stack
    from semlink.stream import StreamConfig, frame_count, frames_of, run

    link_args = ["--delay-ms", "10"]
    if link.startswith("trace:"):
        link_args += ["--uplink", link.split(":", 1)[1]]
    elif link in SYNTHETIC:
        from semlink.bench.policy import synthetic_timestamps
        from semlink.link.traces import write_mahimahi

        path = Path(tempfile.mkdtemp(prefix="semlink-regimes-")) / f"{link}.trace"
        write_mahimahi(path, synthetic_timestamps(link, seconds, seed))
        link_args += ["--uplink", str(path)]
    else:
        link_args += ["--rate", link]
    pixels, labels, _ = frames_of(model, 0, frame_count(fps, seconds))
    out: dict[str, dict[str, float]] = {}
    controllers = [s for s in strategies if s in ADAPTIVE] or ["planner"]
    for controller in controllers:
        procs = Processes(Path(tempfile.mkdtemp(prefix="semlink-cell-")))
        stack = Stack(procs, model=model)
        try:
            stack.start_all(
                link_args=tuple(link_args),
                device_args=("--device-profile", profile, "--controller", controller),
            )
            url = f"ws://127.0.0.1:{stack.ports['device']}/v1/stream"
            asked = (
                [controller]
                if controller != controllers[0]
                else [controller, *[s for s in strategies if s not in ADAPTIVE]]
            )
            for name in asked:
                httpx_replay(stack)
                option = None if name in ADAPTIVE else name
                cfg = StreamConfig(url, fps, seconds, deadline_ms, model, option=option)
                r = asyncio.run(run(cfg, pixels, labels))
                out[name] = {
                    k: r[k]
                    for k in (
                        "on_time",
                        "answered_accuracy",
                        "within_deadline",
                        "bytes_up",
                        "device_cpu_ms",
                    )
                }
                out[name].update(
                    n=r["frames"],
                    p50_ms=r["p50_ms"] or float("nan"),
                    p95_ms=r["p95_ms"] or float("nan"),
                    ci95=r["ci95"],
                )
        finally:
            procs.stop()
    return out


def httpx_replay(stack: Any) -> None:
    """Restarts the link's traces from their beginning: every strategy meets the same stretch."""
    import httpx

    httpx.post(stack.state_url.replace("/state", "/replay"), timeout=5.0)


# --- the whole map ---------------------------------------------------------------------------


def costs_for(cfg: RegimesBenchConfig, model: str) -> dict[str, dict[str, Any]]:
    """Per profile the costs the simulator charges (the CPU costs at full speed under the class's
    quota) and what ``bench profile`` reports of the class: from ``--profile-json`` when it
    measured this model, else measured now (stage times under each quota are reported, not used
    by the simulator)."""
    from semlink.bench.profile import IDLE_S, ProfileBenchConfig, device_costs, measure_profile
    from semlink.models.stream_sim import DeviceCosts
    from semlink.runtime.cpu_quota import PROFILES
    from semlink.runtime.repository import DEFAULT_REPOSITORY, resolve, scan

    docs = [json.loads(Path(path).read_text()) for path in cfg.profile_json]
    doc = next((d for d in docs if d["config"]["model"] == model), None)
    if doc is not None and set(cfg.profiles) <= set(doc["profiles"]):
        base, profiles = DeviceCosts(**doc["costs"]), doc["profiles"]
    else:
        # quick: fewer runs, and a shorter look at the idle device (its reserved CPU coarser)
        frames, repeats, idle = (8, 10, 2.0) if cfg.quick else (24, 20, IDLE_S)
        pcfg = ProfileBenchConfig(
            model=model, profiles=cfg.profiles, repeats=repeats, frames=frames, idle_seconds=idle
        )
        flops = resolve(scan(DEFAULT_REPOSITORY), model).manifest.doc["segment_flops"]
        base = device_costs(model, frames, repeats, idle)
        profiles = {
            p: measure_profile(pcfg, p, flops)
            for p in progress_bar(cfg.profiles, desc=f"profiles of {model}", unit="profile")
        }
    out = {}
    for name in cfg.profiles:
        prof = PROFILES[name]
        costs = base.under(prof.share, (prof.period_us or 10_000) / 1000.0)
        out[name] = {"costs": asdict(costs), "share": prof.share or 1.0, "profile": profiles[name]}
    return out


def default_measured(cfg: RegimesBenchConfig, links: list[str]) -> list[str]:
    """Every trace at the headline class, rate and deadline; the headline at every rate; and the
    slowest class on the slowest and the fastest link."""
    profile, deadline, fps = cfg.headline.split(",")
    cells = [f"{profile}/{link}/{fps}/{deadline}" for link in links if not link.endswith("mbit")]
    cells += [f"{profile}/{rate}/{fps}/{deadline}" for rate in ("1mbit", "10mbit") if rate in links]
    slow = cfg.profiles[-1]
    cells += [
        f"{slow}/{links[0]}/{fps}/{deadline}",
        f"{cfg.profiles[0]}/{links[0]}/{fps}/{deadline}",
    ]
    return list(dict.fromkeys(cells))


def parse_cell(spec: str) -> tuple[str, str, str, str]:
    """``PROFILE/LINK/FPS/DEADLINE`` as its four parts; a trace's link (``trace:/path/f.up``)
    holds slashes of its own."""
    prof, rest = spec.split("/", 1)
    link, fps, dl = rest.rsplit("/", 2)
    return prof, link, fps, dl


def bench(cfg: RegimesBenchConfig) -> dict[str, Any]:
    """Costs, then every predicted cell, then the measured ones; targets from the headline model."""
    t0 = time.perf_counter()
    links = links_of(cfg)
    cells: list[dict[str, Any]] = []
    profiles_json: dict[str, Any] = {}
    for model in cfg.models:
        costs = costs_for(cfg, model)
        for name, c in costs.items():
            p = c["profile"]
            profiles_json.setdefault(
                name,
                {
                    "cpu_share": p["cpu_share"],
                    "period_us": p["period_us"],
                    "gflops": p["gflops"],  # on the headline model (the first measured)
                    "gflops_by_model": {},
                    "device_class": p["device_class"],
                    "source": p["source"],
                },
            )
            profiles_json[name]["gflops_by_model"][model] = p["gflops"]
        deadlines = cfg.deadlines if model == cfg.models[0] else [float(cfg.headline.split(",")[1])]
        jobs = [
            {
                "model": model,
                "profile": prof,
                "share": costs[prof]["share"],
                "costs": costs[prof]["costs"],
                "link": link,
                "link_name": _link_name(link),
                "fps": fps,
                "deadline_ms": dl,
                "seconds": cfg.seconds,
                "min_frames": cfg.min_frames,
                "snr_db": cfg.snr_db,
                "seed": cfg.seed,
            }
            for prof in cfg.profiles
            for link in links
            for fps in cfg.fps
            for dl in deadlines
        ]
        with ProcessPoolExecutor(cfg.workers) as pool:
            for cell in progress_bar(
                pool.map(predict_cell, jobs, chunksize=4),
                total=len(jobs),
                desc=f"regimes of {model}",
                unit="cell",
            ):
                cells.append(cell)
    measured = cfg.measured or default_measured(cfg, links)
    head = cfg.models[0]
    by_key = {(c["model"], c["profile"], c["link"], c["fps"], c["deadline_ms"]): c for c in cells}
    for spec in progress_bar(measured, desc="measured cells", unit="cell"):
        prof, link, fps, dl = parse_cell(spec)
        cell = by_key.get((head, prof, _link_name(link), float(fps), float(dl)))
        if cell is None:
            continue
        s = cell["strategies"]
        best_fixed = max(
            (n for n in s if s[n]["kind"] in ("device", "offload", "jpeg")),
            key=lambda n: s[n]["on_time"],
        )
        best_jpeg = max((n for n in s if s[n]["kind"] == "jpeg"), key=lambda n: s[n]["on_time"])
        names = [n for n in ADAPTIVE if n in s and n != "growth"] + [best_fixed, best_jpeg]
        got = measure_cell(
            head,
            prof,
            link,
            float(fps),
            float(dl),
            cfg.measured_seconds,
            list(dict.fromkeys(names)),
            cfg.seed,
        )
        cell["measured"] = True
        for name, m in got.items():
            s[name]["measured"] = m
    profile, deadline, fps = cfg.headline.split(",")
    result: dict[str, Any] = {
        "config": asdict(cfg),
        "headline": {
            "model": head,
            "profile": profile,
            "fps": float(fps),
            "deadline_ms": float(deadline),
        },
        "profiles": profiles_json,
        "cells": cells,
        "seconds": time.perf_counter() - t0,
    }
    result["agreement"] = agreement(cells)
    result["targets"] = targets(result)
    return result


def _link_name(link: str) -> str:
    return f"trace:{Path(link.split(':', 1)[1]).name}" if link.startswith("trace:") else link


def agreement(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Predicted against measured on-time accuracy in the measured cells (points)."""
    rows = []
    for c in cells:
        for name, s in c["strategies"].items():
            if "measured" in s:
                rows.append(
                    {
                        "cell": f"{c['profile']}/{c['link']}/{c['fps']:g}/{c['deadline_ms']:g}",
                        "strategy": name,
                        "predicted": s["predicted_on_time"],
                        "measured": s["measured"]["on_time"],
                    }
                )
    gaps = [abs(r["predicted"] - r["measured"]) * 100 for r in rows]
    return {
        "rows": rows,
        "within_2_points": float(np.mean([g <= AGREE_POINTS for g in gaps])) if gaps else None,
        "max_gap_points": max(gaps) if gaps else None,
    }


def targets(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The four targets, judged on the headline model's cells (chosen before the run)."""
    h = r["headline"]
    cells = [c for c in r["cells"] if c["model"] == h["model"]]
    out = {}
    # offloading pays somewhere real: a measured cell, a real rate or trace, a class's rate
    real = [c for c in cells if c["measured"] and c["fps"] <= 30]
    pays = [(c, c["paired"].get("best_offload_minus_best_device")) for c in real]
    pays = [(c, p) for c, p in pays if p]
    best = max(pays, key=lambda cp: cp[1][0], default=None)
    out["offloading_pays"] = {
        "met": bool(best and best[1][0] >= 5.0 and best[1][1] > 0),
        "figure": "no measured cell"
        if best is None
        else f"{best[0]['profile']}/{best[0]['link']}/{best[0]['fps']:g} fps: best offload − best device {best[1][0]:+.1f} [{best[1][1]:+.1f}, {best[1][2]:+.1f}] points",
    }
    gaps = [(c, c["paired"].get("best_adaptive_minus_best_fixed")) for c in cells]
    worst = min((cp for cp in gaps if cp[1]), key=lambda cp: cp[1][0], default=None)
    out["adaptivity_finds_every_regime"] = {
        "met": bool(worst and worst[1][0] >= -1.0),
        "figure": ""
        if worst is None
        else f"worst cell {worst[0]['profile']}/{worst[0]['link']}/{worst[0]['fps']:g}/{worst[0]['deadline_ms']:g}: best adaptive − best fixed {worst[1][0]:+.1f} points",
    }
    traces = [
        c
        for c in cells
        if c["link"].startswith("trace:")
        and c["profile"] == h["profile"]
        and c["fps"] == h["fps"]
        and c["deadline_ms"] == h["deadline_ms"]
    ]
    over = []
    for c in traces:
        s = c["strategies"]
        ada = max((n for n in s if s[n]["kind"] in ADAPTING), key=lambda n: s[n]["on_time"])
        d = c["paired"].get("best_adaptive_minus_best_fixed", [0, 0, 0])
        over.append((c["link"], d, 100 * (s["oracle"]["on_time"] - s[ada]["on_time"])))
    out["adaptivity_pays_over_time"] = {
        "met": bool(over) and all(d[0] >= 5 and d[1] > 0 and gap <= 3 for _, d, gap in over),
        "figure": "; ".join(
            f"{link}: {d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}] over the best fixed, {gap:.1f} below the oracle"
            for link, d, gap in over
        ),
    }
    worse = []
    for c in cells:
        d = c["paired"].get("best_adaptive_minus_best_jpeg")
        s = c["strategies"]
        ada = max((n for n in s if s[n]["kind"] in ADAPTING), key=lambda n: s[n]["on_time"])
        jpeg = max((n for n in s if s[n]["kind"] == "jpeg"), key=lambda n: s[n]["on_time"])
        heavy = (
            s[ada]["on_time"] >= 0.9
            and s[jpeg]["on_time"] >= 0.9
            and s[ada]["bytes_up"] > 0.5 * s[jpeg]["bytes_up"]
        )
        if (d and d[0] < -1.0) or heavy:
            worse.append(f"{c['profile']}/{c['link']}/{c['fps']:g}/{c['deadline_ms']:g}")
    out["never_worse_than_the_picture"] = {
        "met": not worse,
        "figure": f"{len(worse)} of {len(cells)} cells miss"
        + (f" (e.g. {', '.join(worse[:3])})" if worse else ""),
    }
    return out


def format_table(r: dict[str, Any]) -> str:
    """The profiles, the measured cells (predicted beside measured), the crossover, the targets."""
    h = r["headline"]
    lines = [
        f"The regime map of {h['model']} (headline: {h['profile']}, {h['fps']:g} frames/s, {h['deadline_ms']:g} ms); {len(r['cells'])} cells, {r['seconds'] / 60:.0f} min"
    ]
    lines.append(f"{'profile':<10} {'share':>7} {'period':>8} {'GFLOP/s':>8}  class")
    for name, p in r["profiles"].items():
        g = p["gflops"]
        lines.append(
            f"{name:<10} {p['cpu_share']:>7.4f} {p['period_us'] / 1000:>6.1f}ms {g:>8.2f}  {p['device_class']}"
        )
    lines.append("\nMeasured cells (real processes): on-time %, predicted / measured")
    for c in r["cells"]:
        if not c["measured"]:
            continue
        shown = ", ".join(
            f"{n} {100 * s['predicted_on_time']:.1f}/{100 * s['measured']['on_time']:.1f}"
            for n, s in c["strategies"].items()
            if "measured" in s
        )
        lines.append(
            f"  {c['profile']}/{c['link']}/{c['fps']:g}fps/{c['deadline_ms']:g}ms: {shown}"
        )
    a = r["agreement"]
    if a["within_2_points"] is not None:
        lines.append(
            f"  predictor within 2 points of the measurement in {100 * a['within_2_points']:.0f} % of the measured strategies (largest gap {a['max_gap_points']:.1f})"
        )
    lines.append(
        "\nCrossover: the slowest class at which the device alone still wins (headline rate and deadline)"
    )
    for link, cls in crossover(r).items():
        lines.append(f"  {link}: {cls}")
    lines.append("\nTargets")
    for name, t in r["targets"].items():
        lines.append(f"  {name}: {'met' if t['met'] else 'MISSED'} ({t['figure']})")
    return "\n".join(lines)


def crossover(r: dict[str, Any]) -> dict[str, str]:
    """Per link: the device classes where the best device-alone option beats every offload at the
    headline frame rate and deadline, and where offloading takes over."""
    h = r["headline"]
    out: dict[str, str] = {}
    for c in r["cells"]:
        if c["model"] != h["model"] or c["fps"] != h["fps"] or c["deadline_ms"] != h["deadline_ms"]:
            continue
        s = c["strategies"]
        dev = max((v["on_time"] for v in s.values() if v["kind"] == "device"), default=0)
        off = max((v["on_time"] for v in s.values() if v["kind"] in ("offload", "jpeg")), default=0)
        out.setdefault(c["link"], "")
        out[c["link"]] += (
            f"{c['profile']} {'device' if dev >= off else 'offload'} ({100 * dev:.0f} vs {100 * off:.0f} %); "
        )
    return out


def heatmaps(r: dict[str, Any], folder: Path) -> list[Path]:
    """Per device class, a heatmap over link x frame rate (headline model and deadline): the
    winning strategy's kind in each cell and how far the best adaptive controller is from the
    best fixed option (points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = r["headline"]
    cells = [
        c for c in r["cells"] if c["model"] == h["model"] and c["deadline_ms"] == h["deadline_ms"]
    ]
    links = list(dict.fromkeys(c["link"] for c in cells))
    rates = sorted({c["fps"] for c in cells})
    profiles = list(dict.fromkeys(c["profile"] for c in cells))
    fig, axes = plt.subplots(
        1, len(profiles), figsize=(4.2 * len(profiles), 0.45 * len(links) + 2.2), squeeze=False
    )
    for ax, prof in zip(axes[0], profiles, strict=True):
        grid = np.full((len(links), len(rates)), np.nan)
        for c in cells:
            if c["profile"] != prof:
                continue
            d = c["paired"].get("best_adaptive_minus_best_fixed")
            grid[links.index(c["link"]), rates.index(c["fps"])] = np.nan if d is None else d[0]
        ax.imshow(grid, cmap="RdYlGn", vmin=-10, vmax=10, aspect="auto")
        for c in cells:
            if c["profile"] != prof:
                continue
            s = c["strategies"]
            win = max((n for n in s if s[n]["kind"] != "oracle"), key=lambda n: s[n]["on_time"])
            i, j = links.index(c["link"]), rates.index(c["fps"])
            label = f"{win}\n{100 * s[win]['on_time']:.0f}%"
            ax.text(j, i, label, ha="center", va="center", fontsize=5.5)
        ax.set_xticks(range(len(rates)), [f"{x:g}" for x in rates])
        ax.set_yticks(
            range(len(links)),
            [link.removeprefix("trace:").removesuffix(".up") for link in links],
            fontsize=7,
        )
        ax.set_xlabel("frames per second")
        ax.set_title(
            f"{prof}: winner, and adaptive − best fixed\n(colour, −10..+10 points)", fontsize=8
        )
    fig.suptitle(
        f"{h['model']}, deadline {h['deadline_ms']:g} ms: on-time accuracy of the winning strategy per cell",
        fontsize=9,
    )
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "regimes.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def main(cfg: RegimesBenchConfig, json_path: str | None = None) -> int:
    """Runs the map, prints its tables, draws the heatmaps, writes the JSON when asked."""

    def run(c: RegimesBenchConfig) -> dict[str, Any]:
        r = bench(c)
        Path(c.out).mkdir(parents=True, exist_ok=True)
        (Path(c.out) / "regimes.json").write_text(json.dumps(r, indent=1, default=str))
        r["plots"] = [str(p) for p in heatmaps(r, Path(c.out))]
        return r

    return run_and_report(run, format_table, cfg, json_path)


__all__ = ["RegimesBenchConfig", "bench", "format_table", "main"]
