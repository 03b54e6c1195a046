"""Benchmarks: each prints its figures beside the baselines it is judged against, measured in
the same run, and can save them as JSON (``--json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_figures(path: str | None, figures: Any) -> None:
    """Writes ``figures`` as JSON to ``path`` (creating its folder); nothing when ``path`` is
    ``None``."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(figures, indent=2) + "\n")
