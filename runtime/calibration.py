"""The controllers' tables, measured on a validation split (never the test split), and the one
reader of the files that hold them.

Two files, both beside the model's manifest:

- ``calibration.json`` (JSCC pipelines, ``semlink calibrate``): accuracy per (SNR, budget, rate)
  of the nested coder;
- ``options.json`` (the any-split network, ``semlink eval options``): for every option of the
  pipeline, its accuracy per SNR (digital options are the same at every SNR), its mean bytes on
  the wire and channel uses, and, for each device exit's confidence, how accurate every option
  is for frames that reach that exit with that confidence.

Both read into one :class:`CalibrationTable`, the form every table-driven controller (the
Lyapunov controller, the planner) chooses from. numpy only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semlink.runtime.pipelines.base import OFFLOAD, Option

CALIBRATION_VERSION = 1
OPTIONS_VERSION = 1
SYMBOL_BYTES = 2 * 2  # one complex symbol as two fp16 values on the wire


def read_table(
    path: str | Path, model_hash: str | None, version_key: str, version: int, remake: str
) -> dict[str, Any]:
    """A table file of this format ``version``, made for the model ``model_hash`` (None: any);
    raises ``FileNotFoundError`` or ``ValueError`` that say how to make it again (``remake``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table {path} does not exist; make it with `{remake}`")
    doc = json.loads(path.read_text())
    if doc.get(version_key) != version:
        raise ValueError(
            f"{path}: {version_key} {doc.get(version_key)!r} is not {version}; re-run `{remake}`"
        )
    if model_hash is not None and doc.get("model_hash") != model_hash:
        raise ValueError(
            f"{path} was made for model {doc.get('model_hash')!r}, not {model_hash!r}; "
            f"re-run `{remake}` for this model"
        )
    return doc


@dataclass
class CalibrationTable:
    """Accuracy per (SNR, option) and each option's costs, measured on validation data.

    ``accuracy[i, a]`` is option ``a``'s accuracy at ``snrs[i]`` dB; ``bytes[a]`` what it sends
    (mean), ``channel_use[a]`` its complex channel uses per source value (0 where not JSCC). For
    the any-split network, ``conditional[k][b, a]`` is option ``a``'s accuracy on the frames whose
    exit after block k had a confidence in bin ``b`` of ``exit_edges`` (NaN where the option does
    not pass that exit or no frame fell there).
    """

    snrs: np.ndarray  # (S,) dB, ascending
    options: list[Option]
    accuracy: np.ndarray  # (S, A)
    bytes: np.ndarray  # (A,)
    channel_use: np.ndarray  # (A,)
    tokens: np.ndarray  # (A,) patch tokens sent (0: none)
    symbols: np.ndarray  # (A,) complex symbols per token (0: not JSCC)
    chance: float = 0.1
    exit_edges: np.ndarray | None = None  # (B+1,)
    conditional: dict[int, np.ndarray] = field(default_factory=dict)  # split -> (B, A)

    @property
    def alphas(self) -> np.ndarray:
        """(A,) each option's budget."""
        return np.array([o.budget for o in self.options])

    @property
    def rates(self) -> np.ndarray:
        """(A,) each option's JSCC rate (1 where it has none)."""
        return np.array([1.0 if o.rate is None else o.rate for o in self.options])

    @classmethod
    def from_rows(
        cls, rows: list[dict[str, Any]], chance: float = 0.1, split: int = 0
    ) -> CalibrationTable:
        """The table from JSCC calibration rows ``{snr_db, alpha, rate, accuracy, k, m,
        channel_uses}`` (offloads at ``split``); the grid must be full."""
        snrs = np.array(sorted({r["snr_db"] for r in rows}))
        actions = sorted({(r["alpha"], r["rate"]) for r in rows})
        index = {a: i for i, a in enumerate(actions)}
        acc = np.full((len(snrs), len(actions)), np.nan)
        per_action: dict[int, dict[str, Any]] = {}
        for r in rows:
            a = index[(r["alpha"], r["rate"])]
            acc[np.searchsorted(snrs, r["snr_db"]), a] = r["accuracy"]
            per_action[a] = r
        if np.isnan(acc).any():
            raise ValueError(
                "calibration table is not a full grid: some (SNR, alpha, rate) points are missing"
            )
        col = [per_action[i] for i in range(len(actions))]
        tokens = np.array([c["k"] for c in col])
        symbols = np.array([c["m"] for c in col])
        return cls(
            snrs,
            [Option(OFFLOAD, split, a, r) for a, r in actions],
            acc,
            (tokens * symbols * SYMBOL_BYTES).astype(float),
            np.array([c["channel_uses"] for c in col]),
            tokens,
            symbols,
            chance,
        )

    @classmethod
    def from_options(cls, doc: dict[str, Any]) -> CalibrationTable:
        """The table of an ``options.json`` document."""
        opts = doc["options"]
        table = cls(
            np.array(doc["snr_db"], float),
            [Option.parse(o["name"]) for o in opts],
            np.array([o["accuracy"] for o in opts], float).T,
            np.array([o["bytes"] for o in opts], float),
            np.array([o.get("channel_uses", 0.0) for o in opts], float),
            np.array([o.get("tokens", 0) for o in opts]),
            np.array([o.get("symbols", 0) for o in opts]),
            1.0 / doc.get("num_classes", 10),
        )
        if "exit_edges" in doc:
            table.exit_edges = np.array(doc["exit_edges"], float)
            table.conditional = {
                int(k): np.array(v, float) for k, v in doc.get("conditional", {}).items()
            }
        return table

    @classmethod
    def load(
        cls, path: str | Path, model_hash: str | None = None, split: int = 0
    ) -> CalibrationTable:
        """Reads a ``calibration.json`` (offloads at ``split``) or an ``options.json``."""
        path = Path(path)
        if path.name == "options.json":
            doc = read_table(
                path,
                model_hash,
                "options_version",
                OPTIONS_VERSION,
                f"semlink eval options --model-dir {path.parent}",
            )
            return cls.from_options(doc)
        doc = read_table(
            path,
            model_hash,
            "calibration_version",
            CALIBRATION_VERSION,
            f"semlink calibrate --model-dir {path.parent}",
        )
        return cls.from_rows(doc["grid"], split=split)

    def index(self, option: Option) -> int:
        """The column of ``option``; raises ``KeyError`` for one the table lacks."""
        return self.options.index(option)

    def accuracy_at(self, snr_db: float | None) -> np.ndarray:
        """(A,) accuracy per option at the lower calibrated SNR (conservative: never a better
        channel than observed); below the lowest, every coded option is a guess."""
        if snr_db is None:  # no channel feedback: assume the worst calibrated channel
            return self.accuracy[0]
        i = int(np.searchsorted(self.snrs, snr_db, side="right")) - 1
        if i < 0:
            coded = self.symbols > 0
            return np.where(coded, self.chance, self.accuracy[0])
        return self.accuracy[i]

    def given_exit(self, split: int, confidence: float) -> np.ndarray | None:
        """(A,) accuracy of every option for frames whose exit after block ``split`` was this
        confident (NaN where unknown); None without conditional tables."""
        if self.exit_edges is None or split not in self.conditional:
            return None
        b = int(
            np.clip(
                np.searchsorted(self.exit_edges, confidence, side="right") - 1,
                0,
                len(self.exit_edges) - 2,
            )
        )
        return self.conditional[split][b]

    def bits(self) -> np.ndarray:
        """Bits on the wire per option."""
        return 8.0 * self.bytes


__all__ = ["CALIBRATION_VERSION", "OPTIONS_VERSION", "CalibrationTable", "read_table"]
