"""``semlink stream``: a camera's frames to a device at a rate, open loop (see
:mod:`semlink.stream`)."""

from __future__ import annotations

import argparse
import asyncio
import os

from semlink.flags import add_dataclass, dataclass_from


def _stream(args: argparse.Namespace) -> int:
    from semlink.bench import write_figures
    from semlink.stream import StreamConfig, format_summary, frames_of, run

    cfg = dataclass_from(args, StreamConfig)
    cfg.api_key = cfg.api_key or os.environ.get("SEMLINK_API_KEY")
    pixels, labels, _ = frames_of(cfg.model, cfg.seed, cfg.frames)
    result = asyncio.run(run(cfg, pixels, labels))
    print(format_summary(cfg, result))
    write_figures(args.json, result)
    return 0


def _flags(p: argparse.ArgumentParser) -> None:
    from semlink.stream import StreamConfig

    add_dataclass(p, StreamConfig, skip=["api_key"])
    p.add_argument("--json", default=None, help="write the summary as JSON here")


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``semlink stream`` to the command line."""
    sub.add_parser(
        "stream",
        help="send a camera's frames to a device at --fps for --seconds, open loop; on-time accuracy",
        populate=_flags,
    ).set_defaults(func=_stream)
