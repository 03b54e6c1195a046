"""``semlink advise``: what to run on a device class, link, frame rate and deadline, from a regime
map (see :mod:`semlink.advise`)."""

from __future__ import annotations

import argparse

from semlink.flags import add_dataclass, dataclass_from


def _advise(args: argparse.Namespace) -> int:
    from semlink.advise import AdviseConfig, advise, format_advice, load_map
    from semlink.bench import write_figures

    cfg = dataclass_from(args, AdviseConfig)
    a = advise(load_map(cfg.map), cfg)
    print(format_advice(a, cfg))
    write_figures(args.json, a)
    return 0


def _flags(p: argparse.ArgumentParser) -> None:
    from semlink.advise import AdviseConfig

    add_dataclass(p, AdviseConfig)
    p.add_argument("--json", default=None, help="write the advice as JSON here")


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``semlink advise`` to the command line."""
    sub.add_parser(
        "advise",
        help="what to run for --profile, --link, --fps and --deadline-ms, from a regime map "
        "(semlink bench regimes)",
        populate=_flags,
    ).set_defaults(func=_advise)
