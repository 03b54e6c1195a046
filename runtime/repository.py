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
from typing import TYPE_CHECKING

from semlink.protocol.params import shown
from semlink.runtime.manifest import Manifest, ManifestError

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

# The zoo that ships with semlink: package data (semlink/zoo), which in a checkout is the
# top-level zoo/ folder. Servers and devices take another repository by setting.
DEFAULT_REPOSITORY = Path(__file__).parent.parent / "zoo"
SHIPPED_PREFIX = {"digits-scene": "scene", "digits-canvas": "digits"}
"""The name prefix of each embedded dataset's shipped pipelines: ``scene-vit``, ``-vit-jscc``, ``-ee``."""
LAYOUT_HINT = (
    "expected REPOSITORY/<model>/<version>/manifest.json with the ONNX graphs it names beside it"
)


def shipped_pipeline(dataset: str, kind: str) -> str:
    """The name of the shipped pipeline of ``kind`` ("vit", "vit-jscc", "ee") trained on
    ``dataset``, e.g. ``scene-vit-jscc``."""
    if dataset not in SHIPPED_PREFIX:
        raise ValueError(f"dataset must be one of {sorted(SHIPPED_PREFIX)}, got {dataset!r}")
    return f"{SHIPPED_PREFIX[dataset]}-{kind}"


class ModelNotFound(LookupError):
    """No model (or no version of it) of that name in the repository."""


@dataclass(frozen=True)
class ModelVersion:
    """One version folder of the repository and its parsed manifest."""

    name: str
    version: str
    path: Path
    manifest: Manifest

    @property
    def kind(self) -> str:
        """Which method this version serves (its manifest's ``kind``)."""
        return self.manifest.kind

    @property
    def num_classes(self) -> int:
        """Classes the model answers (the width of ``logits``)."""
        return self.manifest.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one normalised input image."""
        return self.manifest.image_shape

    def session(self, graph: str, threads: int = 1) -> ort.InferenceSession:
        """An ONNX Runtime session for one of the manifest's graphs (``head``, ``tail``,
        ``step_0``, ``server_s1``, ...), on ``threads`` intra-op threads."""
        import onnxruntime as ort  # here: the processes that only read manifests skip it

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(
            str(self.path / self.manifest.graphs[graph].file),
            opts,
            providers=["CPUExecutionProvider"],
        )


def scan(root: str | Path) -> dict[str, dict[str, ModelVersion]]:
    """Every model version under ``root`` with its manifest parsed and its graphs present.

    Returns ``{name: {version: ModelVersion}}``. Raises ``FileNotFoundError`` with the expected
    layout when there is none, :class:`~semlink.runtime.manifest.ManifestError` for a manifest
    this semlink cannot serve.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} does not exist; {LAYOUT_HINT}")
    models: dict[str, dict[str, ModelVersion]] = {}
    for manifest_path in sorted(root.glob("*/*/manifest.json")):
        version_dir = manifest_path.parent
        try:
            doc = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{manifest_path} is not valid JSON: {exc}") from exc
        manifest = Manifest.parse(doc, str(manifest_path))
        for graph in manifest.graphs.values():
            if not (version_dir / graph.file).is_file():
                raise FileNotFoundError(f"{version_dir}: {graph.file} is missing; {LAYOUT_HINT}")
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
        raise ModelNotFound(f"unknown model {shown(name)}; available: {sorted(models)}")
    versions = models[name]
    if not version:
        return versions[max(versions, key=_version_key)]
    if version not in versions:
        raise ModelNotFound(
            f"model {name!r} has no version {shown(version)}; available: {sorted(versions, key=_version_key)}"
        )
    return versions[version]


def _version_key(v: str) -> tuple[int, str]:
    return (int(v), "") if v.isdigit() else (-1, v)
