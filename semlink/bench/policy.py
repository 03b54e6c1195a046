"""``semlink bench policy``: every controller of an any-split network against every fixed option,
the planner and the oracle in hindsight, under streams (docs/methods.md#one-decision).

The device's stage times are measured under the device profile's CPU quota and the server's at
the machine's speed (:func:`semlink.bench.profile.device_costs`, a device class's quota over them); each stream (a frame rate on a link, for
``seconds``) is then replayed on the *test* split's recorded outcomes of every option
(:mod:`models.stream_sim`), frame by frame, for each controller: the device's own controllers,
configured once (the device's defaults; the tables they read come from the validation split),
the same for every link and rate. The headline is on-time accuracy: a frame counts when its
answer is right and arrives within the deadline (late and dropped frames count as wrong), with
n and a 95 % interval; the adaptive controllers are paired with the best fixed option of the
cell frame by frame. The channel (the SNR the JSCC options cross) is simulated; everything else
is measured.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from semlink.bench import run_and_report
from semlink.models.progress import progress_bar
from semlink.models.stats import paired_bootstrap, pm, wilson
from semlink.models.stream_sim import DeviceCosts, Run, Simulator, Stream

ADAPTIVE = ("planner", "lyapunov", "rl", "threshold", "growth")
SHARED_TRACES = Path(__file__).resolve().parents[2] / ".." / "shared" / "traces"


@dataclass
class PolicyBenchConfig:
    model: str = "scene-split"
    """An any-split network of the zoo (its options.json and outcomes_test.npz)."""
    profile: str = "camera"
    """The device profile whose CPU quota the device stages are measured under."""
    fps: list[float] = field(default_factory=lambda: [5.0, 15.0, 30.0])
    """Frame rates of the streams."""
    links: list[str] = field(default_factory=lambda: ["1mbit", "10mbit", "gilbert-elliott"])
    """Constant rates (``1mbit``), ``gilbert-elliott`` (0.3 / 4 Mbit/s, 2 s a state on average),
    or ``trace:FILE`` (a Mahimahi uplink trace)."""
    deadline_ms: float = 100.0
    seconds: float = 30.0
    rtt_ms: float = 20.0
    snr_db: float = 20.0
    """The channel's SNR for the JSCC options (simulated at the receiver)."""
    repeats: int = 20
    """Runs of each device stage when measuring its time."""
    seed: int = 0
    out: str = "runs/bench-policy"


SYNTHETIC_RANGE = (0.3e6, 4e6)  # the synthetic traces' low and high rates (bit/s)


def synthetic_timestamps(kind: str, seconds: float, seed: int) -> Any:
    """A synthetic uplink trace (``gilbert-elliott``: 0.3 / 4 Mbit/s, 2 s a state on average;
    ``random-walk``: its log-rate walk between them) as Mahimahi timestamps (ms)."""
    from semlink.link.traces import rates_to_timestamps, synthetic_rates

    low, high = SYNTHETIC_RANGE
    return rates_to_timestamps(
        synthetic_rates(kind, seconds + 30.0, seed, low_bps=low, high_bps=high), 100
    )


def schedule_of(link: str, seconds: float, seed: int) -> Any:
    """A link spec's delivery schedule: ``1mbit``, ``gilbert-elliott``, ``random-walk`` or
    ``trace:FILE``."""
    from semlink.link.traces import ConstantSchedule, TraceSchedule, load_trace, parse_rate

    if link.startswith("trace:"):
        return load_trace(link.split(":", 1)[1])
    if link in ("gilbert-elliott", "random-walk"):
        return TraceSchedule(synthetic_timestamps(link, seconds, seed), link)
    return ConstantSchedule(parse_rate(link))


def controllers(model: str, costs: DeviceCosts) -> dict[str, Any]:
    """Each controller the model takes, built as the device builds it (its default settings)
    with its predictor seeded with the measured stage and server times."""
    from semlink.device.controller import load_table, make_controller
    from semlink.device.settings import DeviceSettings
    from semlink.runtime.costs import Predictor, StageTimes
    from semlink.runtime.pipelines import make_pipeline
    from semlink.runtime.repository import DEFAULT_REPOSITORY, resolve, scan

    pipe = make_pipeline(resolve(scan(DEFAULT_REPOSITORY), model))
    table = load_table(pipe)
    out = {}
    for name in pipe.controllers:
        if name in ("fixed",) or (name == "rl" and not (pipe.model.path / "policy.onnx").is_file()):
            continue
        predictor = Predictor(
            pipe.stages,
            lambda o: float(table.bytes[table.index(o)]),
            StageTimes(costs.sustained()),
        )
        for key, ms in costs.server_ms.items():
            predictor.server.observe(key, ms)
        settings = DeviceSettings(model_name=model, controller=name)  # type: ignore[call-arg, arg-type]
        out[name] = lambda s=settings, p=predictor: make_controller(s, pipe, p)
    return out


def cell(sim: Simulator, makers: dict[str, Any], fixed: list[Any]) -> dict[str, Run]:
    """One stream under every fixed option, every controller and the oracle."""
    from semlink.device.controller import FixedController
    from semlink.runtime.pipelines import make_pipeline
    from semlink.runtime.repository import DEFAULT_REPOSITORY, resolve, scan

    runs = {}
    pipe = None
    for option in fixed:
        pipe = pipe or make_pipeline(resolve(scan(DEFAULT_REPOSITORY), makers["_model"]))
        runs[option.name] = sim.run(option.name, FixedController(pipe, option))
    for name, make in makers.items():
        if not name.startswith("_"):
            runs[name] = sim.run(name, make())
    runs["oracle"] = sim.run("oracle", None)
    return runs


def summarise(runs: dict[str, Run], deadline_ms: float) -> dict[str, Any]:
    """Per strategy: on-time accuracy with its interval and the rest of the summary; the best
    fixed option; every adaptive controller paired with it."""
    rows: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():
        s: dict[str, Any] = dict(run.summary(deadline_ms))
        s["ci95"] = list(wilson(s["on_time"], s["n"]))
        s["kind"] = (
            "oracle"
            if name == "oracle"
            else ("adaptive" if name in ADAPTIVE or name == "local" else "fixed")
        )
        rows[name] = s
    fixed = [n for n, r in rows.items() if r["kind"] == "fixed"]
    best_fixed = max(fixed, key=lambda n: rows[n]["on_time"])
    paired = {
        name: paired_bootstrap(runs[name].on_time, runs[best_fixed].on_time).as_dict()
        for name, r in rows.items()
        if r["kind"] in ("adaptive", "oracle")
    }
    return {"strategies": rows, "best_fixed": best_fixed, "minus_best_fixed": paired}


def bench(cfg: PolicyBenchConfig) -> dict[str, Any]:
    """Measures the costs once, then replays every stream for every strategy."""
    from semlink.bench.profile import device_costs
    from semlink.models.option_table import Outcomes
    from semlink.runtime.cpu_quota import PROFILES
    from semlink.runtime.pipelines import make_pipeline
    from semlink.runtime.repository import DEFAULT_REPOSITORY, resolve, scan

    t0 = time.perf_counter()
    mv = resolve(scan(DEFAULT_REPOSITORY), cfg.model)
    pipe = make_pipeline(mv)
    p = PROFILES[cfg.profile]
    costs = device_costs(cfg.model, repeats=cfg.repeats).under(
        p.share, (p.period_us or 10_000) / 1000.0
    )
    outcomes = Outcomes.load(mv.path / "outcomes_test.npz")
    makers: dict[str, Any] = {"_model": cfg.model, **controllers(cfg.model, costs)}
    cells = []
    grid = [(link, fps) for link in cfg.links for fps in cfg.fps]
    for link, fps in progress_bar(grid, desc="bench policy", unit="stream"):
        stream = Stream(fps, cfg.deadline_ms, cfg.seconds, cfg.rtt_ms, cfg.snr_db)
        sim = Simulator(
            outcomes, pipe.stages, costs, schedule_of(link, cfg.seconds, cfg.seed), stream, cfg.seed
        )
        runs = cell(sim, makers, pipe.options())
        cells.append({"link": link, "fps": fps, **summarise(runs, cfg.deadline_ms)})
    return {
        "config": asdict(cfg),
        "costs": asdict(costs),
        "cells": cells,
        "seconds": time.perf_counter() - t0,
    }


def format_table(r: dict[str, Any]) -> str:
    """Per stream: the controllers, the best fixed option and the oracle, on-time first."""
    cfg = r["config"]
    lines = [
        f"{cfg['model']} under the {cfg['profile']} profile (stage times measured under its CPU "
        f"quota), {cfg['deadline_ms']:g} ms deadline, {cfg['seconds']:g} s streams replayed on the "
        f"test split's outcomes; JSCC at {cfg['snr_db']:g} dB (simulated). On time: right within "
        "the deadline (late and dropped frames count as wrong)."
    ]
    for c in r["cells"]:
        s = c["strategies"]
        lines.append(f"\n{c['link']}, {c['fps']:g} frames/s (best fixed: {c['best_fixed']})")
        lines.append(
            f"  {'strategy':<22} {'on time %':>11} {'answered %':>11} {'p50 ms':>7} {'p95 ms':>7} {'B up':>6} {'dev ms':>7}  − best fixed"
        )
        shown = [*ADAPTIVE, "local", c["best_fixed"], "oracle"]
        for name in [n for n in shown if n in s]:
            row = s[name]
            diff = c["minus_best_fixed"].get(name)
            d = (
                ""
                if diff is None
                else f"{diff['diff']:+.1f} [{diff['lo']:+.1f}, {diff['hi']:+.1f}]"
            )
            lines.append(
                f"  {name:<22} {pm(row['on_time'], row['n']):>11} {100 * row['answered_accuracy']:>10.1f} "
                f"{row['p50_ms']:>7.1f} {row['p95_ms']:>7.1f} {row['bytes_up']:>6.0f} {row['device_cpu_ms']:>7.1f}  {d}"
            )
    lines.append(f"\n({r['seconds']:.0f} s)")
    return "\n".join(lines)


def main(cfg: PolicyBenchConfig, json_path: str | None = None) -> int:
    """Runs the benchmark, prints its table, writes the JSON when asked."""
    return run_and_report(bench, format_table, cfg, json_path)


__all__ = ["PolicyBenchConfig", "bench", "format_table", "main"]
