"""The packaging maps the checkout's folders into the one import package ``semlink``: every
Python package folder is listed, so none is left out of a wheel."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_installs():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"semlink": "semlink", **setuptools["package-dir"]}
    found = set()
    for name, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
        if not (ROOT / folder / "__init__.py").exists():  # data only (the zoo)
            found.add(name)
    # a subpackage of a mapped folder is not also a folder of semlink/
    assert not {
        f for f in folders if f != "semlink" and (ROOT / "semlink" / f.split(".")[1]).exists()
    }
    assert set(setuptools["packages"]) == found, (
        f"pyproject.toml's packages: add {sorted(found - set(setuptools['packages']))}, "
        f"remove {sorted(set(setuptools['packages']) - found)}"
    )
