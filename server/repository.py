"""The model repository: one folder per model, one subfolder per version, a manifest in each.

    repository/
      digits-vit/
        1/
          manifest.json   what the graphs expect (see models/export.py)
          head.onnx       device head (the device loads it)
          tail.onnx       server tail (the server loads it)

The server loads every version's tail into an ONNX Runtime session; the device loads the head
(and the tail, for local fallback) of the model it serves.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

SUPPORTED_MANIFEST_VERSIONS = (1,)
EARLY_EXIT = "early-exit"  # manifest kind of an early-exit network (models/export_early_exit.py)
LAYOUT_HINT = (
    "expected REPOSITORY/<model>/<version>/manifest.json with the ONNX graphs it names beside it"
)


class ModelNotFound(LookupError):
    pass


@dataclass
class ModelVersion:
    name: str
    version: str
    path: Path
    manifest: dict[str, Any]

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def num_patches(self) -> int:
        return int(self.manifest["num_patches"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.manifest["image_shape"]
        return int(c), int(h), int(w)

    @property
    def is_early_exit(self) -> bool:
        return self.manifest.get("kind") == EARLY_EXIT

    def session(self, part: str, threads: int = 1) -> ort.InferenceSession:
        """An ONNX Runtime session for ``head`` or ``tail``, or for an early-exit network one of
        its graphs (``step_0``, ``server_s1``, ...)."""
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        entry = self.manifest["graphs"][part] if self.is_early_exit else self.manifest[part]
        return ort.InferenceSession(
            str(self.path / entry["file"]), opts, providers=["CPUExecutionProvider"]
        )

    def input_metadata(self) -> list[tuple[str, str, list[int]]]:
        """(name, datatype, shape) of what a request sends; -1 marks a free dimension."""
        if self.is_early_exit:
            shapes = self.manifest["activation_shapes"]
            same = all(s == shapes[0] for s in shapes)
            acts = [-1, *shapes[0]] if same else [-1] * (1 + len(shapes[0]))
            out = [("activations", "FP16", acts)]
            if self.manifest.get("recursive"):
                out.append(("prev_logp", "FP32", [-1, self.num_classes]))
            return out
        return [
            ("tokens", "FP16", [-1, -1, self.embed_dim]),
            ("token_scale", "FP32", [-1, -1]),
        ]


def scan(root: str | Path) -> dict[str, dict[str, ModelVersion]]:
    """Finds every model version under ``root``; raises with the expected layout if none."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} does not exist; {LAYOUT_HINT}")
    models: dict[str, dict[str, ModelVersion]] = {}
    for manifest_path in sorted(root.glob("*/*/manifest.json")):
        version_dir = manifest_path.parent
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{manifest_path} is not valid JSON: {exc}") from exc
        if manifest.get("manifest_version") not in SUPPORTED_MANIFEST_VERSIONS:
            raise ValueError(
                f"{manifest_path}: manifest_version {manifest.get('manifest_version')!r} is not supported "
                f"(this semlink reads {SUPPORTED_MANIFEST_VERSIONS}); re-export with `semlink export`"
            )
        for file in graph_files(manifest):
            if not (version_dir / file).is_file():
                raise FileNotFoundError(f"{version_dir}: {file} is missing; {LAYOUT_HINT}")
        mv = ModelVersion(version_dir.parent.name, version_dir.name, version_dir, manifest)
        models.setdefault(mv.name, {})[mv.version] = mv
    if not models:
        raise FileNotFoundError(f"model repository {root} holds no model; {LAYOUT_HINT}")
    return models


def graph_files(manifest: dict[str, Any]) -> list[str]:
    """The ONNX files a manifest names: head and tail of a token pipeline, or every split's
    graphs of an early-exit network."""
    if manifest.get("kind") == EARLY_EXIT:
        return [g["file"] for g in manifest["graphs"].values()]
    return [manifest[part]["file"] for part in ("head", "tail")]


def resolve(
    models: dict[str, dict[str, ModelVersion]], name: str, version: str = ""
) -> ModelVersion:
    """The requested version, or the highest when ``version`` is empty; raises :class:`ModelNotFound`."""
    if name not in models:
        raise ModelNotFound(f"unknown model {name!r}; available: {sorted(models)}")
    versions = models[name]
    if not version:
        return versions[max(versions, key=_version_key)]
    if version not in versions:
        raise ModelNotFound(
            f"model {name!r} has no version {version!r}; available: {sorted(versions, key=_version_key)}"
        )
    return versions[version]


def _version_key(v: str) -> tuple[int, str]:
    return (int(v), "") if v.isdigit() else (-1, v)


def run_tail(
    session: ort.InferenceSession, tokens: np.ndarray, mask: np.ndarray, name: str | None = None
) -> np.ndarray:
    """Logits (B, classes) for float32 tail input (B, T, width) and mask (B, T).

    ``name`` is the graph's payload input (``tokens``, or ``symbols`` for JSCC); default: its first.
    """
    name = name or session.get_inputs()[0].name
    return session.run(
        ["logits"], {name: tokens.astype(np.float32), "token_mask": mask.astype(np.float32)}
    )[0]
