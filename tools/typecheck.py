"""mypy over semlink as it installs: the checkout's folders become the package ``semlink`` only
through the packaging (``package-dir`` in pyproject.toml), which mypy cannot read, so this makes
``build/typecheck/semlink`` (links to ``semlink/``'s entries and to each mapped folder, copies
where the file system has no links), runs ``mypy -p semlink`` on it (pyproject.toml's mypy_path
points there, so a plain ``mypy -p semlink`` after this sees the same) and names the checkout's
files in its messages. ``make install`` and ``make lint`` run it.

    python tools/typecheck.py [--tree-only] [mypy options]
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"


def _link(dest: Path, src: Path) -> None:
    try:
        dest.symlink_to(src, target_is_directory=src.is_dir())
    except OSError:  # no symbolic links here: a copy, fresh every run
        if src.is_dir():
            shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest)


def build_tree() -> dict[str, str]:
    """Lays out ``build/typecheck/semlink`` as the wheel has it; returns ``{prefix in the tree:
    folder in the checkout}`` for naming files."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {name: folder for name, folder in setuptools["package-dir"].items()}
    shutil.rmtree(TREE, ignore_errors=True)
    package = TREE / "semlink"
    package.mkdir(parents=True)
    for entry in sorted((ROOT / "semlink").iterdir()):
        if entry.name != "__pycache__":
            _link(package / entry.name, entry)
    names = {}
    for name, folder in mapped.items():
        dest = TREE.joinpath(*name.split("."))
        _link(dest, ROOT / folder)
        names[f"{dest.relative_to(ROOT)}/"] = f"{folder}/"
    names[f"{package.relative_to(ROOT)}/"] = "semlink/"
    return names


def main(argv: list[str]) -> int:
    """Builds the tree, then (unless ``--tree-only``) runs mypy on it; mypy's exit status."""
    names = build_tree()
    if "--tree-only" in argv:
        return 0
    from mypy import api

    out, err, status = api.run(["-p", "semlink", *argv])
    for prefix, folder in sorted(names.items(), key=lambda kv: -len(kv[0])):
        out = out.replace(prefix, folder)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
