"""``semlink demo``: server, link and device on loopback, the test split streamed through them."""

from __future__ import annotations

import argparse

from semlink.flags import add_dataclass, dataclass_from


def _demo(args: argparse.Namespace) -> int:
    from semlink.demo import DemoConfig, run_demo

    return run_demo(dataclass_from(args, DemoConfig))


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``semlink demo`` to the command line."""

    def demo(p: argparse.ArgumentParser) -> None:
        from semlink.demo import DemoConfig

        add_dataclass(p, DemoConfig)

    p = sub.add_parser(
        "demo",
        help="server, link and device on loopback; stream the test split through them",
        populate=demo,
    )
    p.set_defaults(func=_demo)
