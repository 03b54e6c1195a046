"""The serving processes: ``semlink server``, ``device`` and ``link`` (their flags generated
from their settings classes, :mod:`semlink.flags`), and what they are given to run with:
``semlink certs`` (a development PKI) and ``semlink trace`` (a synthetic link trace). Torch-free.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from semlink.flags import add_settings, settings_from

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


def _settings_flags(module: str, cls: str) -> object:
    def populate(p: argparse.ArgumentParser) -> None:
        import importlib

        add_settings(p, getattr(importlib.import_module(module), cls), skip=SECRET_FIELDS)

    return populate


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``semlink server``, ``device``, ``link``, ``certs`` and ``trace`` to the command line."""
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
