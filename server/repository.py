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
LAYOUT_HINT = (
    "expected REPOSITORY/<model>/<version>/manifest.json with head.onnx and tail.onnx beside it"
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

    def session(self, part: str, threads: int = 1) -> ort.InferenceSession:
        """An ONNX Runtime session for ``head`` or ``tail``."""
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(
            str(self.path / self.manifest[part]["file"]), opts, providers=["CPUExecutionProvider"]
        )


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
        for part in ("head", "tail"):
            if not (version_dir / manifest[part]["file"]).is_file():
                raise FileNotFoundError(
                    f"{version_dir}: {manifest[part]['file']} is missing; {LAYOUT_HINT}"
                )
        mv = ModelVersion(version_dir.parent.name, version_dir.name, version_dir, manifest)
        models.setdefault(mv.name, {})[mv.version] = mv
    if not models:
        raise FileNotFoundError(f"model repository {root} holds no model; {LAYOUT_HINT}")
    return models


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
