"""Serving subcommands: ``server``, ``device``, ``link``, ``trace``, ``demo``. Torch-free."""

from __future__ import annotations

import argparse
from pathlib import Path


def _server(args: argparse.Namespace) -> int:
    from server.main import main
    from server.settings import ServerSettings

    overrides = {
        k: v for k, v in vars(args).items() if k in ServerSettings.model_fields and v is not None
    }
    main(ServerSettings(**overrides))
    return 0


def _device(args: argparse.Namespace) -> int:
    from device.main import main
    from device.settings import DeviceSettings

    overrides = {
        k: v for k, v in vars(args).items() if k in DeviceSettings.model_fields and v is not None
    }
    main(DeviceSettings(**overrides))
    return 0


def _certs(args: argparse.Namespace) -> int:
    from semlink.security import DEFAULT_HOSTS, make_dev_pki

    paths = make_dev_pki(args.out, tuple(args.host or DEFAULT_HOSTS), args.days)
    for what, path in paths.items():
        print(f"{what:<12} {path}")
    print(
        "development use only. server: --tls-cert server.pem --tls-key server-key.pem "
        "--tls-client-ca ca.pem; device: --tls-ca ca.pem --tls-cert device.pem --tls-key device-key.pem"
    )
    return 0


def _add_server_security(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--insecure",
        action="store_const",
        const=True,
        default=None,
        help="serve gRPC without TLS (trusted networks and tests only)",
    )
    p.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate of the gRPC port")
    p.add_argument("--tls-key", type=Path, default=None, help="its PEM private key")
    p.add_argument(
        "--tls-client-ca", type=Path, default=None, help="require device certificates from this CA"
    )
    p.add_argument(
        "--api-keys-file",
        type=Path,
        default=None,
        help="API keys for HTTP, one per line (or SEMLINK_SERVER_API_KEYS)",
    )


def _add_device_security(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--breaker-failures",
        type=int,
        default=None,
        help="consecutive failed offloads that open the circuit breaker (3)",
    )
    p.add_argument(
        "--breaker-reset-s", type=float, default=None, help="seconds before a trial request (2)"
    )
    p.add_argument(
        "--insecure",
        action="store_const",
        const=True,
        default=None,
        help="plaintext gRPC to the server (trusted networks and tests only)",
    )
    p.add_argument("--tls-ca", type=Path, default=None, help="CA of the server's certificate")
    p.add_argument("--tls-cert", type=Path, default=None, help="device certificate (mutual TLS)")
    p.add_argument("--tls-key", type=Path, default=None, help="its PEM private key")
    p.add_argument(
        "--tls-server-name", default=None, help="name to verify in the server's certificate"
    )
    p.add_argument(
        "--api-keys-file",
        type=Path,
        default=None,
        help="API keys for HTTP, one per line (or SEMLINK_DEVICE_API_KEYS)",
    )


def _link(args: argparse.Namespace) -> int:
    import asyncio

    from protocol.link_main import LinkSettings, serve

    overrides = {
        k: v for k, v in vars(args).items() if k in LinkSettings.model_fields and v is not None
    }
    asyncio.run(serve(LinkSettings(**overrides)))
    return 0


def _trace(args: argparse.Namespace) -> int:
    from protocol.traces import parse_rate, rates_to_timestamps, synthetic_rates, write_mahimahi

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

    return run_demo(DemoConfig(**{k: getattr(args, k) for k in DemoConfig.__dataclass_fields__}))


def _bench_serving(args: argparse.Namespace) -> int:
    from semlink.bench.serving import ServingBenchConfig, main

    return main(ServingBenchConfig(out=args.out, requests=args.requests), args.json)


def _bench_controller(args: argparse.Namespace) -> int:
    from semlink.bench.controller import ControllerBenchConfig, main

    cfg = ControllerBenchConfig(
        requests=args.requests, budget=args.budget, snr_trace=args.snr_trace, out=args.out
    )
    if args.model_dir:
        cfg.model_dir = args.model_dir
    return main(cfg, args.json)


def _bench_policy(args: argparse.Namespace) -> int:
    from semlink.bench.policy import PolicyBenchConfig, main

    cfg = PolicyBenchConfig(episodes=args.episodes, out=args.out, seed=args.seed)
    if args.model_dir:
        cfg.model_dir = args.model_dir
    return main(cfg, args.json)


def _bench_reliability(args: argparse.Namespace) -> int:
    from semlink.bench.reliability import ReliabilityBenchConfig, main

    cfg = ReliabilityBenchConfig(
        devices=args.devices,
        requests=args.requests,
        concurrency=args.concurrency,
        fault_seconds=args.fault_seconds,
        out=args.out,
    )
    return main(cfg, args.json)


def _bench_compare(args: argparse.Namespace) -> int:
    from semlink.bench.compare import CompareBenchConfig, main

    cfg = CompareBenchConfig(requests=args.requests, burst=args.burst, out=args.out)
    if args.rates:
        cfg.rates_mbit = tuple(args.rates)
    return main(cfg, args.json)


def _bench_split(args: argparse.Namespace) -> int:
    from semlink.bench.split import SplitBenchConfig, main

    cfg = SplitBenchConfig(
        epochs=args.epochs, finetune_epochs=args.finetune_epochs, k=args.k, out=args.out
    )
    return main(cfg, args.json)


def _bench_all(args: argparse.Namespace) -> int:
    from semlink.bench.report import main

    return main(Path(args.out), args.json, args.only)


def _baseline_server(args: argparse.Namespace) -> int:
    from semlink.bench import baselines
    from server.settings import DEFAULT_REPOSITORY

    serve = baselines.serve_plain if args.kind == "plain" else baselines.serve_litserve
    serve(args.port, args.model_repository or DEFAULT_REPOSITORY, args.model)
    return 0


def _bench_link(args: argparse.Namespace) -> int:
    from semlink.bench.link import main

    return main(args.seconds, args.json)


def add_commands(sub: argparse._SubParsersAction) -> None:
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
    p = bsub.add_parser(
        "compare", help="semlink vs JPEG upload (FastAPI, LitServe), fp32 tokens, local only"
    )
    p.add_argument("--json", default=None)
    p.add_argument("--out", default="runs/bench-compare", help="folder for the plot and logs")
    p.add_argument("--requests", type=int, default=60, help="sequential requests per system/rate")
    p.add_argument("--burst", type=int, default=24, help="requests for the throughput figure")
    p.add_argument(
        "--rates", type=float, nargs="+", default=None, help="link rates, Mbit/s (0.1 1 10 100)"
    )
    p.set_defaults(func=_bench_compare)
    p = bsub.add_parser("serving", help="overhead, wire efficiency, batching, slow-link latency")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--out", default="runs/bench-serving", help="folder for process logs")
    p.add_argument("--requests", type=int, default=200)
    p.set_defaults(func=_bench_serving)
    p = bsub.add_parser("controller", help="Lyapunov controller vs LP optimum and fixed policies")
    p.add_argument("--json", default=None)
    p.add_argument("--out", default="runs/bench-controller", help="folder for the plots")
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--budget", type=float, default=0.02, help="average channel uses per pixel")
    p.add_argument("--snr-trace", default=None, help="also simulate this 't_ms snr_db' trace")
    p.add_argument(
        "--model-dir", default=None, help="JSCC model folder with calibration.json and eval.json"
    )
    p.set_defaults(func=_bench_controller)
    p = bsub.add_parser("policy", help="RL offloading policy vs threshold, growth rule, oracle")
    p.add_argument("--json", default=None)
    p.add_argument("--out", default="runs/bench-policy", help="folder for the plot")
    p.add_argument("--episodes", type=int, default=3000, help="episodes per channel regime")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", default=None, help="early-exit folder with policy.onnx")
    p.set_defaults(func=_bench_policy)
    p = bsub.add_parser("split", help="ADC split learning vs baselines; ALaST vs full fine-tuning")
    p.add_argument("--json", default=None)
    p.add_argument("--out", default="runs/bench-split", help="folder for the plot")
    p.add_argument("--epochs", type=int, default=4, help="split learning epochs per run")
    p.add_argument("--finetune-epochs", type=int, default=6, help="full / ALaST epochs")
    p.add_argument("--k", type=int, default=2, help="ALaST: trainable blocks per step")
    p.set_defaults(func=_bench_split)
    p = bsub.add_parser("reliability", help="load, faults, fuzzing and access control")
    p.add_argument("--json", default=None)
    p.add_argument("--out", default="runs/bench-reliability", help="folder for process logs")
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--requests", type=int, default=1000, help="per device in the load test")
    p.add_argument("--concurrency", type=int, default=4, help="in flight per device")
    p.add_argument("--fault-seconds", type=float, default=24.0, help="each fault's stream")
    p.set_defaults(func=_bench_reliability)
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
    p.add_argument("--model", default="digits-vit")
    p.set_defaults(func=_baseline_server)

    p = sub.add_parser("server", help="the edge server (OIP over gRPC and HTTP)")
    p.add_argument("--model-repository", type=Path, default=None, help="default: the shipped zoo")
    p.add_argument("--host", default=None)
    p.add_argument("--grpc-port", type=int, default=None, help="default 8001")
    p.add_argument("--http-port", type=int, default=None, help="default 8000")
    p.add_argument("--max-batch-size", type=int, default=None)
    p.add_argument("--max-queue-delay-ms", type=float, default=None)
    _add_server_security(p)
    p.set_defaults(func=_server)

    p = sub.add_parser("device", help="the device runtime (HTTP front, head model, controller)")
    p.add_argument(
        "--server",
        default=None,
        help="gRPC HOST:PORT of the server or link (default 127.0.0.1:8001)",
    )
    p.add_argument(
        "--link-state-url", default=None, help="the link emulator's /state URL (channel feedback)"
    )
    p.add_argument("--model-repository", type=Path, default=None)
    p.add_argument("--model-name", default=None)
    p.add_argument("--host", default=None)
    p.add_argument("--http-port", type=int, default=None, help="default 8080")
    p.add_argument("--budget", type=float, default=None, help="default token budget alpha (0, 1]")
    p.add_argument(
        "--rate", type=float, default=None, help="default JSCC rate r (0, 1] (JSCC pipelines)"
    )
    p.add_argument(
        "--channel",
        default=None,
        choices=["awgn", "rayleigh", "none"],
        help="JSCC channel the server simulates",
    )
    p.add_argument("--token-format", default=None, choices=["fp16", "int8", "fp32"])
    p.add_argument("--deadline-ms", type=float, default=None)
    p.add_argument(
        "--controller",
        default=None,
        choices=["fixed", "lyapunov", "rl", "threshold", "growth"],
        help="rl, threshold and growth decide at each exit of an early-exit model (digits-ee)",
    )
    p.add_argument(
        "--channel-budget",
        type=float,
        default=None,
        help="lyapunov: average channel uses per pixel",
    )
    p.add_argument("--exit-threshold", type=float, default=None, help="threshold/growth: tau_exit")
    p.add_argument("--grow-threshold", type=float, default=None, help="growth: tau_grow")
    p.add_argument("--lyapunov-v", type=float, default=None, help="lyapunov: accuracy weight V")
    p.add_argument("--lyapunov-mu", type=float, default=None, help="lyapunov: queue step mu")
    _add_device_security(p)
    p.set_defaults(func=_device)

    p = sub.add_parser("certs", help="a development CA with server and device certificates")
    p.add_argument("--out", default="certs", help="folder for the PEM files")
    p.add_argument(
        "--host",
        action="append",
        default=None,
        help="name or IP the server certificate is valid for (repeatable; default: "
        "localhost, 127.0.0.1, server, semlink-server)",
    )
    p.add_argument("--days", type=int, default=365)
    p.set_defaults(func=_certs)

    p = sub.add_parser("link", help="the trace-driven link emulator (a shaping TCP proxy)")
    p.add_argument("--listen", default=None, help="HOST:PORT devices connect to (127.0.0.1:9001)")
    p.add_argument(
        "--upstream", default=None, help="HOST:PORT of the server's gRPC (127.0.0.1:8001)"
    )
    p.add_argument("--uplink", default=None, help="Mahimahi trace towards the server")
    p.add_argument("--downlink", default=None, help="Mahimahi trace towards the device")
    p.add_argument(
        "--rate", default=None, help="constant rate without a trace, e.g. 500kbit (10mbit)"
    )
    p.add_argument("--delay-ms", type=float, default=None, help="one-way delay (10)")
    p.add_argument("--queue-bytes", type=int, default=None, help="queue bound per direction (1e6)")
    p.add_argument(
        "--snr-db", type=float, default=None, help="SNR reported without --snr-trace (20)"
    )
    p.add_argument("--snr-trace", default=None, help="file of 't_ms snr_db' lines")
    p.add_argument("--state-port", type=int, default=None, help="HTTP port of GET /state (9002)")
    p.set_defaults(func=_link)

    p = sub.add_parser("trace", help="write a synthetic Mahimahi trace")
    p.add_argument("kind", choices=["constant", "step", "gilbert-elliott", "random-walk"])
    p.add_argument("--out", required=True)
    p.add_argument("--duration", type=float, default=60.0, help="seconds")
    p.add_argument("--low", default="200kbit")
    p.add_argument("--high", default="5mbit")
    p.add_argument("--step-ms", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_trace)

    p = sub.add_parser(
        "demo", help="server, link and device on loopback; stream the test split through them"
    )
    p.add_argument(
        "--requests",
        type=int,
        default=269,
        help="how many test images to send (default: the whole test split)",
    )
    p.add_argument(
        "--uplink",
        default=None,
        help="Mahimahi trace (default: a generated Gilbert-Elliott trace switching between 0.3 and 4 Mbit/s)",
    )
    p.add_argument("--delay-ms", type=float, default=20.0)
    p.add_argument("--budget", type=float, default=0.25)
    p.add_argument(
        "--controller",
        default="fixed",
        choices=["fixed", "lyapunov", "rl", "threshold", "growth"],
        help="rl, threshold and growth run the early-exit network digits-ee",
    )
    p.add_argument(
        "--model",
        default=None,
        help="default: digits-vit (fixed), digits-vit-jscc (lyapunov), digits-ee (rl, threshold, growth)",
    )
    p.add_argument(
        "--channel-budget",
        type=float,
        default=0.02,
        help="lyapunov: average channel uses per pixel",
    )
    p.add_argument(
        "--snr-trace", default=None, help="'t_ms snr_db' file (default: a generated random walk)"
    )
    p.add_argument(
        "--out", default="runs/demo", help="folder for the summary JSON and timeline PNG"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--hold",
        action="store_true",
        help="keep server, link and device running after the summary (to browse the dashboard)",
    )
    p.set_defaults(func=_demo)
