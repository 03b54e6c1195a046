"""``semlink bench`` (every benchmark, each against its baselines in the same run) and
``semlink baseline-server`` (what users run instead of semlink: a JPEG upload to a whole model).
Torch-free until a benchmark that trains runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from semlink.flags import add_dataclass, dataclass_from

# benchmark name -> (module, config class, help); each module has main(cfg, json_path)
BENCHMARKS = {
    "compare": (
        "compare",
        "CompareBenchConfig",
        "semlink vs JPEG upload (FastAPI, LitServe), fp32 tokens, the device alone",
    ),
    "serving": (
        "serving",
        "ServingBenchConfig",
        "overhead, wire efficiency, batching, slow-link latency",
    ),
    "controller": (
        "controller",
        "ControllerBenchConfig",
        "Lyapunov controller vs LP optimum and fixed policies",
    ),
    "policy": (
        "policy",
        "PolicyBenchConfig",
        "every controller of the any-split network, the planner and the oracle, under streams",
    ),
    "regimes": (
        "regimes",
        "RegimesBenchConfig",
        "the regime map: device classes x links x frame rates x deadlines, predicted and measured",
    ),
    "exit-policy": (
        "exit_policy",
        "ExitPolicyBenchConfig",
        "the early-exit network's RL policy vs threshold, growth rule, oracle",
    ),
    "split": (
        "split",
        "SplitBenchConfig",
        "ADC split learning vs baselines; ALaST vs full fine-tuning",
    ),
    "reliability": (
        "reliability",
        "ReliabilityBenchConfig",
        "load, faults, fuzzing and access control",
    ),
    "profile": (
        "profile",
        "ProfileBenchConfig",
        "the device profile: the whole model on the device (CPU quota) against the server",
    ),
    "front": (
        "front",
        "FrontBenchConfig",
        "the device's HTTP front against the server alone, under locust",
    ),
    "capacity": (
        "capacity",
        "CapacityBenchConfig",
        "service time per pipeline, devices per server, the formula against real replicas",
    ),
    "replicas": (
        "replicas",
        "ReplicasBenchConfig",
        "several servers: expected-delay choice vs round robin, a replica killed and added",
    ),
    "hardness": (
        "hardness",
        "HardnessBenchConfig",
        "a harder digits-scene: the device's exit against the full model, fine-tuned",
    ),
}


def _bench_config(name: str) -> type:
    import importlib

    module, cls, _ = BENCHMARKS[name]
    return getattr(importlib.import_module(f"semlink.bench.{module}"), cls)  # type: ignore[no-any-return]


def _bench(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"semlink.bench.{BENCHMARKS[args.what][0]}")
    return int(module.main(dataclass_from(args, _bench_config(args.what)), args.json))


def _bench_all(args: argparse.Namespace) -> int:
    from semlink.bench.report import main

    return main(Path(args.out), args.json, args.only)


def _baseline_server(args: argparse.Namespace) -> int:
    from semlink.bench.baselines import Tls
    from semlink.runtime.repository import DEFAULT_REPOSITORY

    if args.kind == "plain":
        from semlink.bench.baselines import serve_plain as serve
    else:
        from semlink.bench.litserve_api import serve_litserve as serve
    if (args.tls_cert is None) != (args.tls_key is None) or (
        args.tls_client_ca is not None and args.tls_cert is None
    ):
        print(
            "error: HTTPS needs both --tls-cert and --tls-key (and --tls-client-ca only with "
            "them); give none of the three for plain HTTP",
            file=sys.stderr,
        )
        return 2
    tls = Tls(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    serve(args.port, args.model_repository or DEFAULT_REPOSITORY, args.model, tls)
    return 0


def _bench_link(args: argparse.Namespace) -> int:
    from semlink.bench.link import main

    return main(args.seconds, args.json)


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``semlink bench [<what>]`` and ``semlink baseline-server`` to the command line."""
    bench = sub.add_parser(
        "bench",
        help="benchmarks, each against its baselines in the same run; alone: all of them and a report",
    )
    bench.add_argument("--json", default=None, help="write every benchmark's figures in one file")
    bench.add_argument(
        "--out", default="runs/bench", help="folder for report.md, plots and each one's output"
    )
    bench.add_argument(
        "--only", nargs="+", default=None, help="run these benchmarks only (e.g. compare serving)"
    )
    bench.set_defaults(func=_bench_all)
    bsub = bench.add_subparsers(dest="what")
    for name, (_, _, help_) in BENCHMARKS.items():

        def populate(p: argparse.ArgumentParser, name: str = name) -> None:
            add_dataclass(p, _bench_config(name))
            p.add_argument("--json", default=None, help="write the figures here")

        p = bsub.add_parser(name, help=help_, populate=populate)
        p.set_defaults(func=_bench)
    p = bsub.add_parser("link", help="link emulator rate accuracy, 100 kbit/s to 100 Mbit/s")
    p.add_argument("--seconds", type=float, default=10.0, help="measurement per rate")
    p.add_argument("--json", default=None)
    p.set_defaults(func=_bench_link)

    p = sub.add_parser(
        "baseline-server",
        help="what users run instead: JPEG upload, whole model (for `semlink bench compare`)",
    )
    p.add_argument("kind", choices=["plain", "litserve"], help="plain FastAPI or LitServe")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-repository", type=Path, default=None)
    p.add_argument("--model", default="scene-vit")
    p.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate: serve HTTPS")
    p.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    p.add_argument(
        "--tls-client-ca", type=Path, default=None, help="admit only clients this CA signed"
    )
    p.set_defaults(func=_baseline_server)
