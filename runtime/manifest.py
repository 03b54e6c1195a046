"""The manifest of one model version, typed: what its graphs expect, parsed once when the
repository is scanned.

``manifest.json`` is written by the exporters in ``models/`` (``export.py`` for token pipelines,
``export_early_exit.py`` for early-exit networks). Everything that serves a model reads it through
:class:`Manifest`, never by string key, so a field that is missing or of the wrong type is one
clear error at start-up instead of a ``KeyError`` in the middle of a request.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from semlink.runtime.input_check import InputCheck

MANIFEST_VERSION = 2  # 2: normalisation statistics are part of the manifest
SUPPORTED_MANIFEST_VERSIONS = (MANIFEST_VERSION,)


class ManifestError(ValueError):
    """A manifest that this semlink cannot serve; the message names the field and the fix."""


class PipelineKind(enum.StrEnum):
    """The methods semlink serves; each has one :class:`~semlink.runtime.pipelines.base.Pipeline`."""

    TOKENS = "token-selection"  # budget-conditioned token selection, tokens on the wire
    JSCC = "token-selection+jscc"  # the same, kept tokens coded by a nested deep JSCC coder
    EARLY_EXIT = "early-exit"  # recursive early-exit network, activations on the wire


@dataclass(frozen=True)
class Normalisation:
    """Per-channel statistics the model was trained with: ``x = (pixel / 255 - mean) / std``."""

    dataset: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels`` (H, W, C) in [0, 1] -> normalised float32 (1, C, H, W)."""
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return ((pixels - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)

    def invert(self, image: np.ndarray) -> np.ndarray:
        """A normalised image (C, H, W) -> 8-bit pixels (H, W, C), as a camera would give them."""
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        pixels = image.transpose(1, 2, 0) * std + mean
        return np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Graph:
    """One ONNX file of a model version and the names of its inputs and outputs."""

    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class JsccSpec:
    """The nested JSCC coder: ``symbols`` complex symbols per token at rate 1 (``d_c``).

    ``snr_range``: an SNR-conditioned coder's training range (dB); its head and tail then take
    an ``snr_db`` input, clamped to the range, with the top of the range for a noiseless link.
    None: the coder codes the same way at every SNR (manifests from before the conditioning).
    """

    symbols: int
    channels: tuple[str, ...]
    snr_range: tuple[float, float] | None = None

    def snr_input(self, snr_db: float | None) -> float:
        """The ``snr_db`` an SNR-conditioned graph is fed for a link at ``snr_db`` (None: noiseless)."""
        assert self.snr_range is not None
        lo, hi = self.snr_range
        return hi if snr_db is None else min(max(float(snr_db), lo), hi)


@dataclass(frozen=True)
class ExitSpec:
    """Where an early-exit network may stop and what crosses the wire there.

    ``exit_blocks[j]`` is the number of blocks behind exit ``j``; the device holds the exits
    ``device_exits`` (indices into ``exit_blocks``); an offload after exit ``j`` sends activations
    of shape ``activation_shapes[j]`` (tokens, width) and, if ``recursive``, that exit's log p.
    """

    exit_blocks: tuple[int, ...]
    device_exits: tuple[int, ...]
    activation_shapes: tuple[tuple[int, ...], ...]
    recursive: bool

    @property
    def splits(self) -> tuple[int, ...]:
        """The ``split`` parameter values an offload may carry: device blocks behind each exit."""
        return tuple(self.exit_blocks[j] for j in self.device_exits)


@dataclass(frozen=True)
class Manifest:
    """Everything the device and the server need to serve one model version without torch."""

    kind: PipelineKind
    model_hash: str
    image_shape: tuple[int, int, int]  # (C, H, W) of the normalised input
    num_classes: int
    normalisation: Normalisation
    graphs: Mapping[str, Graph]  # head / tail, or step_j / server_sj / device_sj
    num_patches: int = 0  # token pipelines: patch tokens of a full image
    embed_dim: int = 0  # token pipelines: width of a token
    splits: tuple[int, ...] = ()  # token pipelines: blocks the device runs
    jscc: JsccSpec | None = None
    exits: ExitSpec | None = None
    input_check: InputCheck | None = None  # how far an input is from the training data

    @classmethod
    def parse(cls, doc: Any, where: str = "manifest") -> Manifest:
        """Validates a ``manifest.json`` document.

        Args:
            doc: the parsed JSON document.
            where: what to call it in errors (its path).

        Returns:
            The typed manifest.

        Raises:
            ManifestError: a field is missing, mistyped or out of range; the message names it.
        """
        r = _Reader(doc, where)
        version = r.get("manifest_version", int)
        if version not in SUPPORTED_MANIFEST_VERSIONS:
            raise ManifestError(
                f"{where}: manifest_version {version!r} is not supported (this semlink reads "
                f"{SUPPORTED_MANIFEST_VERSIONS}); re-export with `semlink export`"
            )
        try:
            kind = PipelineKind(r.get("kind", str))
        except ValueError:
            raise ManifestError(
                f"{where}: kind {doc['kind']!r} is unknown; one of {[k.value for k in PipelineKind]}"
            ) from None
        shape = r.ints("image_shape", 3)
        norm = _Reader(r.get("normalization", dict), f"{where}: normalization")
        mean, std = norm.floats("mean", shape[0]), norm.floats("std", shape[0])
        if any(s <= 0 for s in std):
            raise ManifestError(f"{where}: normalization.std must be positive, got {list(std)}")
        try:
            input_check = InputCheck.from_manifest(doc.get("input_check"))
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"{where}: {exc}") from None
        common = {
            "kind": kind,
            "model_hash": r.get("model_hash", str),
            "image_shape": (shape[0], shape[1], shape[2]),
            "num_classes": r.positive("num_classes"),
            "normalisation": Normalisation(norm.get("dataset", str), mean, std),
            "input_check": input_check,
        }
        if kind is PipelineKind.EARLY_EXIT:
            graphs = {
                name: _graph(g, f"{where}: graphs.{name}")
                for name, g in r.get("graphs", dict).items()
            }
            exits = ExitSpec(
                exit_blocks=r.ints("exit_blocks"),
                device_exits=r.ints("device_exits"),
                activation_shapes=tuple(
                    _Reader({"s": s}, f"{where}: activation_shapes").ints("s")
                    for s in r.get("activation_shapes", list)
                ),
                recursive=bool(doc.get("recursive", False)),
            )
            if len(exits.activation_shapes) != len(exits.exit_blocks):
                raise ManifestError(f"{where}: one activation shape per exit block is needed")
            for j in exits.device_exits:
                if not 0 <= j < len(exits.exit_blocks):
                    raise ManifestError(f"{where}: device exit {j} is not an exit block index")
                for name in (f"step_{j}", f"server_s{j}"):
                    if name not in graphs:
                        raise ManifestError(f"{where}: graphs.{name} is missing")
            return cls(**common, graphs=graphs, exits=exits)
        graphs = {part: _graph(r.get(part, dict), f"{where}: {part}") for part in ("head", "tail")}
        jscc = None
        if kind is PipelineKind.JSCC:
            spec = _Reader(r.get("jscc", dict), f"{where}: jscc")
            snr_range = (
                spec.floats("snr_range", 2, "low and high dB") if "snr_range" in spec.doc else None
            )
            jscc = JsccSpec(
                spec.positive("symbols"),
                tuple(spec.get("channels", list)),
                None if snr_range is None else (snr_range[0], snr_range[1]),
            )
            if snr_range is not None and not snr_range[0] < snr_range[1]:
                raise ManifestError(f"{where}: jscc.snr_range must be [low, high], low < high")
        return cls(
            **common,
            graphs=graphs,
            num_patches=r.positive("num_patches"),
            embed_dim=r.positive("embed_dim"),
            splits=r.ints("splits"),
            jscc=jscc,
        )


def _graph(doc: Any, where: str) -> Graph:
    r = _Reader(doc, where)
    # inputs/outputs are a list of names, or a {name: datatype} mapping (token pipelines)
    return Graph(r.get("file", str), tuple(doc.get("inputs", ())), tuple(doc.get("outputs", ())))


class _Reader:
    """Typed field access that names the field and the document in its errors."""

    def __init__(self, doc: Any, where: str) -> None:
        if not isinstance(doc, dict):
            raise ManifestError(f"{where} must be a JSON object, got {type(doc).__name__}")
        self.doc, self.where = doc, where

    def get(self, key: str, typ: type) -> Any:
        """The field ``key`` of type ``typ``; raises :class:`ManifestError` naming it."""
        if key not in self.doc:
            raise ManifestError(f"{self.where}: field {key!r} is missing; re-export the model")
        value = self.doc[key]
        if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
            raise ManifestError(
                f"{self.where}: field {key!r} must be {typ.__name__}, got {value!r}"
            )
        return value

    def positive(self, key: str) -> int:
        """The integer field ``key``, at least 1."""
        value = self.get(key, int)
        if value < 1:
            raise ManifestError(f"{self.where}: field {key!r} must be >= 1, got {value}")
        return int(value)

    def ints(self, key: str, length: int | None = None) -> tuple[int, ...]:
        """The list field ``key`` of non-negative integers (of ``length`` items, if given)."""
        values = self.get(key, list)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values) or (
            length is not None and len(values) != length
        ):
            n = f"{length} " if length is not None else ""
            raise ManifestError(
                f"{self.where}: field {key!r} must be a list of {n}non-negative integers, got {values!r}"
            )
        return tuple(int(v) for v in values)

    def floats(
        self, key: str, length: int, what: str = "one per image channel"
    ) -> tuple[float, ...]:
        """The list field ``key`` of ``length`` finite numbers (``what`` they are, for errors)."""
        values = self.get(key, list)
        ok = len(values) == length and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        )
        if not ok:
            raise ManifestError(
                f"{self.where}: field {key!r} must be a list of {length} finite numbers "
                f"({what}), got {values!r}"
            )
        return tuple(float(v) for v in values)
