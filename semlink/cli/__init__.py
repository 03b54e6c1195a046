"""The ``semlink`` command line: train, eval, export, zoo, and the serving processes.

One module per verb, each adding its subcommands with ``register(sub)``; :data:`VERBS` lists
them in the order ``semlink --help`` shows them. Training and evaluation import torch lazily,
so the serving subcommands run on a torch-free install.
"""

from __future__ import annotations

import argparse
import os
import sys

from semlink.cli import (
    advise,
    bench,
    calibrate,
    data,
    demo,
    evaluate,
    export,
    processes,
    stream,
    train,
    zoo,
)
from semlink.flags import LazyParser
from semlink.runtime import logs

DESCRIPTION = """The ``semlink`` command line: train, eval, export, zoo, and the serving processes.

Training and evaluation import torch lazily, so the serving subcommands run on a torch-free
install.
"""
VERBS = (train, evaluate, export, calibrate, data, zoo, bench, advise, processes, stream, demo)
"""The modules that add the subcommands, in the order the help lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The whole ``semlink`` parser; each subcommand's flags are built when it is used."""
    parser = LazyParser(prog="semlink", description=DESCRIPTION)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="json: one object per line"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        if verb is zoo:
            zoo.register(sub, run=main)  # the zoo runs other verbs: it is handed the runner
        else:
            verb.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs ``semlink`` with ``argv`` (default: the process's); returns the exit status (2 for a
    bad value or a missing file, with the message on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        if args.command == "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return train.under_torchrun(args)
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
