"""Benchmarks: each prints its figures beside the baselines it is judged against, measured in
the same run, and can save them as JSON (``--json``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

FULL_SPEED = (
    "device profile: none: every process runs at this machine's full speed, no CPU quota "
    "(`semlink bench compare` and `semlink bench profile` run the device under one)"
)
"""The line each benchmark that runs the device without a device profile prints."""


def write_figures(path: str | None, figures: Any) -> None:
    """Writes ``figures`` as JSON to ``path`` (creating its folder); nothing when ``path`` is
    ``None``."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(figures, indent=2, default=str) + "\n")


def model_and_test_split(model: str, frames: int | None = None) -> tuple[Any, Any]:
    """The zoo's ``model`` (its newest version) and the test split of the dataset it was trained
    on, composed as far as its first ``frames`` where it is composed
    (:func:`models.stream_costs.model_and_test_split`)."""
    from semlink.models.stream_costs import model_and_test_split as split

    return split(model, frames)


def run_and_report(
    bench: Callable[[Any], dict[str, Any]],
    table: Callable[[dict[str, Any]], str],
    cfg: Any,
    json_path: str | None,
) -> int:
    """The ``main`` of a benchmark: runs it, writes its figures when asked, prints its table
    (figures first: a long run's results outlive a fault in its table)."""
    result = bench(cfg)
    write_figures(json_path, result)
    print(table(result))
    return 0
