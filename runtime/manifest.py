"""The manifest of one model version, typed: what its graphs expect.

``manifest.json`` is written by the exporters in ``models/`` (``export.py`` for token pipelines,
``export_early_exit.py`` for early-exit networks, ``export_any_split.py`` for the any-split
network). The fields every kind has are parsed when the repository is scanned
(:meth:`Manifest.parse`); a kind's own fields by its pipeline when it is made, at start-up,
through :class:`Reader`. Either way a field that is missing or of the wrong type is one clear
error at start-up instead of a ``KeyError`` in the middle of a request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semlink.runtime.input_check import InputCheck

MANIFEST_VERSION = 2  # 2: normalisation statistics are part of the manifest
SUPPORTED_MANIFEST_VERSIONS = (MANIFEST_VERSION,)


class ManifestError(ValueError):
    """A manifest that this semlink cannot serve; the message names the field and the fix."""


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

    def apply_uint8(self, pixels: np.ndarray) -> np.ndarray:
        """8-bit ``pixels`` (H, W, C) -> normalised float32 (1, C, H, W), as :meth:`apply` of
        ``pixels / 255``, in one multiply-add per value (a camera's frames on the stream)."""
        scale = (1.0 / (255.0 * np.asarray(self.std, np.float32))).astype(np.float32)
        shift = (-np.asarray(self.mean, np.float32) / np.asarray(self.std, np.float32)).astype(
            np.float32
        )
        chw = np.ascontiguousarray(pixels.transpose(2, 0, 1), np.float32)
        chw *= scale[:, None, None]
        chw += shift[:, None, None]
        return chw[None]

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
class Manifest:
    """What every pipeline's manifest holds, typed; the fields of one kind (token geometry, the
    JSCC coder, the exits) are the pipeline's to read from :attr:`doc` when it is made
    (``make_pipeline``, at start-up), so adding a kind touches no code here."""

    kind: str
    model_hash: str
    image_shape: tuple[int, int, int]  # (C, H, W) of the normalised input
    num_classes: int
    normalisation: Normalisation
    graphs: Mapping[str, Graph]  # head / tail, step_j / server_sj, ...
    input_check: InputCheck | None = None  # how far an input is from the training data
    doc: Mapping[str, Any] = field(default_factory=dict)  # the whole document, for the pipeline
    where: str = "manifest"  # what to call it in errors (its path)

    @classmethod
    def parse(cls, doc: Any, where: str = "manifest") -> Manifest:
        """Validates the fields every ``manifest.json`` has.

        Args:
            doc: the parsed JSON document.
            where: what to call it in errors (its path).

        Returns:
            The typed manifest.

        Raises:
            ManifestError: a field is missing, mistyped or out of range; the message names it.
        """
        r = Reader(doc, where)
        version = r.get("manifest_version", int)
        if version not in SUPPORTED_MANIFEST_VERSIONS:
            raise ManifestError(
                f"{where}: manifest_version {version!r} is not supported (this semlink reads "
                f"{SUPPORTED_MANIFEST_VERSIONS}); re-export with `semlink export`"
            )
        shape = r.ints("image_shape", 3)
        norm = Reader(r.get("normalization", dict), f"{where}: normalization")
        mean, std = norm.floats("mean", shape[0]), norm.floats("std", shape[0])
        if any(s <= 0 for s in std):
            raise ManifestError(f"{where}: normalization.std must be positive, got {list(std)}")
        try:
            input_check = InputCheck.from_manifest(doc.get("input_check"))
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"{where}: {exc}") from None
        # the graphs: a "graphs" object, or (token pipelines) "head" and "tail" at the top
        named = (
            r.get("graphs", dict)
            if "graphs" in doc
            else {p: r.get(p, dict) for p in ("head", "tail")}
        )
        return cls(
            kind=r.get("kind", str),
            model_hash=r.get("model_hash", str),
            image_shape=(shape[0], shape[1], shape[2]),
            num_classes=r.positive("num_classes"),
            normalisation=Normalisation(norm.get("dataset", str), mean, std),
            graphs={name: _graph(g, f"{where}: graphs.{name}") for name, g in named.items()},
            input_check=input_check,
            doc=doc,
            where=where,
        )

    def reader(self) -> Reader:
        """Typed access to the kind's own fields, naming this manifest in errors."""
        return Reader(self.doc, self.where)

    def need_graphs(self, *names: str) -> None:
        """Raises :class:`ManifestError` unless every named graph is listed."""
        for name in names:
            if name not in self.graphs:
                raise ManifestError(f"{self.where}: graphs.{name} is missing; re-export the model")


def _graph(doc: Any, where: str) -> Graph:
    r = Reader(doc, where)
    # inputs/outputs are a list of names, or a {name: datatype} mapping (token pipelines)
    return Graph(r.get("file", str), tuple(doc.get("inputs", ())), tuple(doc.get("outputs", ())))


class Reader:
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

    def child(self, key: str) -> Reader:
        """The object field ``key``, as a reader naming it in errors."""
        return Reader(self.get(key, dict), f"{self.where}: {key}")

    def fail(self, key: str, expected: str, got: Any) -> None:
        """Raises :class:`ManifestError`: field ``key`` should be ``expected``."""
        raise ManifestError(f"{self.where}: field {key!r} must be {expected}, got {got!r}")

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
