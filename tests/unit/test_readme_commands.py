"""Every ``semlink`` command the README shows parses with the real command line (flags, choices
and values as written), so a reader who copies one gets it run, not a usage error."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> list[str]:
    """The ``semlink`` commands of the README's bash blocks, continuation lines joined, comments
    and ``&`` dropped; a line with a placeholder (``...``, ``A|B``) is not a command to run."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    out = []
    for block in blocks:
        for text in block.replace("\\\n", " ").splitlines():
            for line in text.split(" #", 1)[0].split("&&"):
                line = line.strip().rstrip("&").strip()
                if line.startswith("semlink ") and "..." not in line and "|" not in line:
                    out.append(line)
    return out


def test_the_readme_shows_commands():
    assert len(readme_commands()) >= 30


@pytest.mark.parametrize("line", readme_commands())
def test_every_readme_command_parses(line):
    from semlink.cli import build_parser

    argv = shlex.split(line.replace("$pki", "/certs"))[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`{line}` does not parse (exit {exc.code})")
    assert callable(args.func)
