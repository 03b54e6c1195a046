"""Text that points somewhere points at something: every pointer into docs/methods.md in the
code and docs names one of its anchors, and nothing cites the numbered sections of a methods
document the repository does not hold."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Files being rewritten elsewhere while their "METHODS §n" pointers wait to be replaced; remove a
# name here once its file points to docs/methods.md.
PENDING: set[str] = set()  # files still citing 'METHODS §n' (none left)


def _text_files() -> dict[str, str]:
    """Every tracked (or new, not ignored) text file of the checkout: path -> text."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    out = {}
    for name in listed:
        path = ROOT / name
        if path.suffix in {".py", ".md", ".toml", ".yml", ".yaml", ".html"} and path.is_file():
            out[name] = path.read_text(errors="replace")
    return out


def test_every_pointer_to_a_method_names_an_anchor_of_the_methods_page():
    anchors = set(re.findall(r'<a id="([\w-]+)"></a>', (ROOT / "docs/methods.md").read_text()))
    assert {"token-selection", "jscc", "lyapunov", "early-exits", "rl-offloading"} <= anchors
    broken = [
        f"{name}: #{anchor}"
        for name, text in _text_files().items()
        for anchor in re.findall(r"methods\.md#([\w-]+)", text)
        if anchor not in anchors
    ]
    assert not broken, f"pointers to no anchor of docs/methods.md: {broken}"


def test_nothing_cites_numbered_sections_of_an_absent_methods_document():
    stale = [
        name
        for name, text in _text_files().items()
        if "METHODS §" in text and name not in PENDING and name != "tests/unit/test_docs.py"
    ]
    assert not stale, (
        f"'METHODS §n' points outside the repository; use docs/methods.md#...: {stale}"
    )
