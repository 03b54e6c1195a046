"""Serving subcommands: ``server``, ``device``, ``link``, ``certs``, ``trace``, ``demo``,
``bench`` and ``baseline-server``. Torch-free.

The flags of the three processes come from their settings classes and those of the demo and the
benchmarks from their config dataclasses (:mod:`semlink.flags`), each built only when its
subcommand runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from semlink.flags import add_dataclass, add_settings, dataclass_from, settings_from

# secrets stay out of argv (and so out of `ps`): API keys come from the environment or a file
SECRET_FIELDS = ("api_keys",)


def _quiet_grpc_core() -> None:
    """gRPC's C core logs every failed TLS handshake (a plaintext client retrying every two
    seconds fills the log with the same OpenSSL line); keep its errors only, unless the user set
    GRPC_VERBOSITY. Must run before grpc is imported."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _server(args: argparse.Namespace) -> int:
    _quiet_grpc_core()
    from semlink.server.main import main
    from semlink.server.settings import ServerSettings

    main(settings_from(args, ServerSettings))
    return 0


def _device(args: argparse.Namespace) -> int:
    _quiet_grpc_core()
    from semlink.device.main import main
    from semlink.device.settings import DeviceSettings

    main(settings_from(args, DeviceSettings))
    return 0


def _link(args: argparse.Namespace) -> int:
    import asyncio

    from semlink.link.main import LinkSettings, serve

    asyncio.run(serve(settings_from(args, LinkSettings)))
    return 0


def default_certs_dir() -> Path:
    """Where ``semlink certs`` writes by default: the user's config folder, outside any checkout."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "semlink" / "certs"


def _inside_checkout(path: Path) -> Path | None:
    """The git work tree holding ``path``, if any."""
    for parent in [path.resolve(), *path.resolve().parents]:
        if (parent / ".git").exists():
            return parent
    return None


def _certs(args: argparse.Namespace) -> int:
    from semlink.runtime.security import DEFAULT_HOSTS, make_dev_pki

    out = Path(args.out) if args.out else default_certs_dir()
    if (tree := _inside_checkout(out)) is not None:
        print(
            f"warning: {out} is inside the git checkout {tree}: keep private keys out of "
            "commits (semlink's .gitignore covers certs/ and *-key.pem)",
            file=sys.stderr,
        )
    paths = make_dev_pki(out, tuple(args.host or DEFAULT_HOSTS), args.days)
    for what, path in paths.items():
        print(f"{what:<12} {path}")
    print(
        "development use only. server: --tls-cert server.pem --tls-key server-key.pem "
        "--tls-client-ca ca.pem; device: --tls-ca ca.pem --tls-cert device.pem --tls-key device-key.pem"
    )
    return 0


def _trace(args: argparse.Namespace) -> int:
    from semlink.link.traces import parse_rate, rates_to_timestamps, synthetic_rates, write_mahimahi

    rates = synthetic_rates(
        args.kind,
        args.duration,
        args.seed,
        low_bps=parse_rate(args.low),
        high_bps=parse_rate(args.high),
        step_ms=args.step_ms,
    )
    ts = rates_to_timestamps(rates, args.step_ms)
    write_mahimahi(args.out, ts)
    print(
        f"wrote {args.out}: {args.kind}, {args.duration:g} s, average {rates.mean() / 1e6:.3f} Mbit/s, {len(ts)} opportunities"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from semlink.demo import DemoConfig, run_demo

    return run_demo(dataclass_from(args, DemoConfig))


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
        "RL offloading policy vs threshold, growth rule, oracle",
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


def _settings_flags(module: str, cls: str) -> object:
    def populate(p: argparse.ArgumentParser) -> None:
        import importlib

        add_settings(p, getattr(importlib.import_module(module), cls), skip=SECRET_FIELDS)

    return populate


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Adds the serving, demo and benchmark subcommands to the ``semlink`` parser."""
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

    processes = (
        (
            "server",
            "the edge server (OIP over gRPC and HTTP)",
            "server.settings.ServerSettings",
            _server,
        ),
        (
            "device",
            "the device runtime (HTTP front, head model, controller)",
            "device.settings.DeviceSettings",
            _device,
        ),
        (
            "link",
            "the trace-driven link emulator (a shaping TCP proxy)",
            "link.main.LinkSettings",
            _link,
        ),
    )
    for name, help_, settings, func in processes:
        module, cls = f"semlink.{settings}".rsplit(".", 1)
        p = sub.add_parser(name, help=help_, populate=_settings_flags(module, cls))
        p.set_defaults(func=func)

    p = sub.add_parser("certs", help="a development CA with server and device certificates")
    p.add_argument(
        "--out",
        default=None,
        help="folder for the PEM files (default: $XDG_CONFIG_HOME/semlink/certs, or "
        "~/.config/semlink/certs; a folder inside a git checkout gets a warning)",
    )
    p.add_argument(
        "--host",
        action="append",
        default=None,
        help="name or IP the server certificate is valid for (repeatable; default: "
        "localhost, 127.0.0.1, server, semlink-server)",
    )
    p.add_argument("--days", type=int, default=365)
    p.set_defaults(func=_certs)

    p = sub.add_parser("trace", help="write a synthetic Mahimahi trace")
    p.add_argument("kind", choices=["constant", "step", "gilbert-elliott", "random-walk"])
    p.add_argument("--out", required=True)
    p.add_argument("--duration", type=float, default=60.0, help="seconds")
    p.add_argument("--low", default="200kbit")
    p.add_argument("--high", default="5mbit")
    p.add_argument("--step-ms", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_trace)

    def demo(p: argparse.ArgumentParser) -> None:
        from semlink.demo import DemoConfig

        add_dataclass(p, DemoConfig)

    p = sub.add_parser(
        "demo",
        help="server, link and device on loopback; stream the test split through them",
        populate=demo,
    )
    p.set_defaults(func=_demo)
