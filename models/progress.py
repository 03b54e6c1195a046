"""Progress bars for long work: drawn on a terminal, quiet in logs, pipes and CI."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """A ``tqdm`` bar that draws itself only when its output is a terminal (``disable=None``),
    unless ``disable`` is given (``True`` for the ranks of a distributed run that do not
    report). Long runs in the background say how they go through their log lines instead."""
    kwargs.setdefault("disable", None)
    return tqdm(iterable, **kwargs)
