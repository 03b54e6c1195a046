"""``semlink bench``: every benchmark, one after the other, each in its own process, gathered into
``report.md`` (their tables and plots, the machine they ran on, when each ran) and, with
``--json``, one JSON file holding every benchmark's figures. The serving, policy and
reliability benchmarks run on shorter settings than their defaults here.

The report is kept up to date benchmark by benchmark: each run leaves ``<name>/run.json`` in the
output folder, and ``--only NAME`` reruns that one and rewrites ``report.md`` with it and every
other benchmark's last run found there (each section says when it ran).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from semlink.bench.compare import machine
from semlink.models.progress import progress_bar

# name -> (arguments after `semlink bench`, what it shows); each also gets --json and --out
BENCHMARKS: dict[str, tuple[tuple[str, ...], str]] = {
    "compare": (
        ("compare",),
        "semlink vs JPEG upload (FastAPI, LitServe), fp32 tokens, the device alone",
    ),
    "serving": (
        ("serving", "--requests", "100"),
        "serving overhead, wire bytes, dynamic batching, slow-link latency",
    ),
    "link": (("link", "--seconds", "5"), "link emulator: delivered vs configured rate"),
    "controller": (("controller",), "Lyapunov control vs the LP optimum and fixed (α, r)"),
    "policy": (
        ("policy",),
        "every controller of the any-split network, the planner and the oracle, under streams",
    ),
    "exit-policy": (
        ("exit-policy", "--episodes", "1500"),
        "the early-exit network's RL policy vs thresholds, growth rule and oracle",
    ),
    "reliability": (
        ("reliability", "--requests", "500"),
        "load, faults, fuzzing and access control",
    ),
    "split": (
        ("split",),
        "ADC split learning vs baselines; ALaST vs full fine-tuning (digits-scene-shifted)",
    ),
    "profile": (
        ("profile",),
        "the device profile: the whole model under the CPU quota against the server",
    ),
    "front": (
        ("front",),
        "the device's HTTP front against the server alone, under locust",
    ),
    "replicas": (
        ("replicas",),
        "several servers: expected-delay choice vs round robin; a replica killed and added",
    ),
    "capacity": (
        ("capacity",),
        "service time per pipeline, devices per server, the formula against real replicas",
    ),
    "hardness": (
        ("hardness",),
        "a harder digits-scene: the device's exit against the full model, fine-tuned (validation)",
    ),
}
NO_OUT = {"link"}  # benchmarks without an --out folder
MARKDOWN = {"compare", "split"}  # benchmarks whose output is Markdown already


def run_one(name: str, out: Path) -> dict:
    args, _ = BENCHMARKS[name]
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "semlink.cli",
        "bench",
        *args,
        "--json",
        str(folder / "figures.json"),
    ]
    if name not in NO_OUT:
        cmd += ["--out", str(folder)]
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t0 = time.perf_counter()
    with open(folder / "output.txt", "w") as out_, open(folder / "progress.log", "w") as err:
        code = subprocess.run(cmd, stdout=out_, stderr=err).returncode
    figures = folder / "figures.json"
    run = {
        "name": name,
        "command": "semlink bench " + " ".join(args),
        "started": started,
        "exit_code": code,
        "seconds": time.perf_counter() - t0,
        "figures": json.loads(figures.read_text()) if figures.exists() else None,
        "output": (folder / "output.txt").read_text(),  # the report; progress went to stderr
        "plots": sorted(p.relative_to(out).as_posix() for p in folder.glob("*.png")),
    }
    (folder / "run.json").write_text(json.dumps(run) + "\n")  # one line: per-sample lists
    return run


def earlier_runs(out: Path, skip: list[str]) -> list[dict]:
    """The last run of every benchmark not in ``skip`` that ``out`` holds (its ``run.json``)."""
    found = []
    for name in BENCHMARKS:
        path = out / name / "run.json"
        if name not in skip and path.is_file():
            found.append(json.loads(path.read_text()))
    return found


def write_report(runs: list[dict], out: Path, started: str) -> Path:
    """``out/report.md``: a table of the runs (in :data:`BENCHMARKS` order), then each one's
    command, output and plots."""
    m = machine()
    runs = sorted(runs, key=lambda r: list(BENCHMARKS).index(r["name"]))
    total = sum(r["seconds"] for r in runs)
    lines = [
        "# semlink benchmark report",
        "",
        f"Written {started}; {total / 60:.1f} min of benchmarks in all. Regenerate: "
        f"`semlink bench --out {out}` (all), `semlink bench --only NAME --out {out}` (one, "
        "keeping the others' last runs).",
        "",
        f"Machine: {m['processor']}, {m['cpus']} CPUs, {m['platform']}, Python {m['python']}.",
        "",
        "| benchmark | what | ran | time | status |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        status = "ok" if r["exit_code"] == 0 else f"failed (exit {r['exit_code']})"
        lines.append(
            f"| [{r['name']}](#{r['name']}) | {BENCHMARKS[r['name']][1]} "
            f"| {r.get('started', '?')} | {r['seconds']:.0f} s | {status} |"
        )
    for r in runs:
        lines += ["", f"## {r['name']}", "", f"`{r['command']}`", ""]
        text = r["output"].strip()
        if r["name"] in MARKDOWN and r["exit_code"] == 0:
            lines.append(text)  # already Markdown tables
        else:
            lines += ["```", text, "```"]
        lines += [f"![{p}]({p})" for p in r["plots"]]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(out: Path, json_path: str | None, only: list[str] | None = None) -> int:
    names = only or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    runs = []
    for name in (bar := progress_bar(names, desc="benchmarks", unit="bench")):
        bar.set_postfix_str(name)
        runs.append(run_one(name, out))
    report = write_report(runs + earlier_runs(out, names), out, started)
    if json_path:
        doc = {"machine": machine(), **{r["name"]: r["figures"] for r in runs}}
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
    failed = [r["name"] for r in runs if r["exit_code"] != 0]
    print(f"report: {report}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
