"""ONNX export of the split pipeline: a device *head* and a server *tail*, plus the manifest.

Head graph: ``image (B, C, H, W) float32, alpha (B,) float32`` -> ``tokens (B, k, d) float32``
(the kept patch tokens, highest key first) and ``indices (B, k) int64`` (their positions in the
patch grid, row-major), with ``k = max(1, ceil(max(alpha) * N))``: a batch shares one token
count, the device runs one request at a time.

Tail graph: ``tokens (B, T, d) float32, token_mask (B, T) float32`` -> ``logits (B, classes)``;
``T`` (1..N) is dynamic, and ``token_mask`` (1 = real, 0 = padding) lets the server batch requests
that kept different numbers of tokens.

A JSCC pipeline sends ``symbols`` (B, k, 2 d_c) in place of ``tokens``; with an SNR-conditioned
coder both graphs also take ``snr_db (B,) float32``, the SNR the symbols cross.

The torch exporter cannot produce an output whose length depends on an input's *value*, so the
head is exported with all tokens sorted by key, and the budget-dependent slice is appended as
plain ONNX nodes (``Ceil``, ``Cast``, ``Slice``) by :func:`_append_budget_slice`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from semlink.models import checkpoint
from semlink.models.datasets import normalisation
from semlink.models.jscc import JSCC
from semlink.models.vit import SelectorViT
from semlink.runtime.manifest import MANIFEST_VERSION

log = logging.getLogger(__name__)

DEFAULT_ZOO = Path(__file__).resolve().parent.parent / "zoo"
DEFAULT_MODEL = "digits-vit"


class _SortedHead(nn.Module):
    """Device head, patches sorted by key; with a coder, each patch becomes its JSCC symbols
    ``[re | im]`` (B, N, 2 d_c), unnormalised: the device truncates to the rate and normalises.
    An SNR-conditioned coder codes for the ``snr_db`` (B,) input."""

    def __init__(self, model: SelectorViT, coder: JSCC | None = None) -> None:
        super().__init__()
        self.model = model
        self.coder = coder

    def forward(
        self, image: torch.Tensor, alpha: torch.Tensor, snr_db: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.forward_device(image, alpha)
        order = out.key.argsort(dim=1, descending=True)  # (B, N)
        x = out.tokens[:, 1:].gather(1, order[..., None].expand(-1, -1, out.tokens.shape[-1]))
        if self.coder is not None:
            x = torch.cat(self.coder.encoder(x, snr_db), dim=-1)
        return x, order


class _Tail(nn.Module):
    """Server tail; with a coder it takes received, zero-filled symbols ``[re | im]`` (B, T, 2 d_c)
    and, for an SNR-conditioned coder, the ``snr_db`` (B,) they were received at."""

    def __init__(self, model: SelectorViT, coder: JSCC | None = None) -> None:
        super().__init__()
        self.model = model
        self.coder = coder

    def forward(
        self, x: torch.Tensor, token_mask: torch.Tensor, snr_db: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.coder is not None:
            re, im = x.chunk(2, dim=-1)
            x = self.coder.decoder(re, im, snr_db)
        return self.model.forward_tail(x, token_mask)


def _snr_conditioned(coder: JSCC | None) -> bool:
    return coder is not None and coder.cfg.snr_conditioned


_TORCHLIB_REGISTRIES: dict[int, Any] = {}


@contextlib.contextmanager
def _torchlib_registry_built_once() -> Iterator[None]:
    """``torch.onnx.export`` (torch 2.13) builds its ATen-to-ONNX registry anew on every call,
    reading the source of about 500 onnxscript functions: about 0.5 s of CPU a call (the tiny
    any-split network's 11 graphs export in 30 s instead of 35). Within this block every call
    reuses the first registry built for its opset (the exporter only reads it); the graphs are
    the same. Where torch's internals differ, nothing changes."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        yield
        return
    registry = _registration.ONNXRegistry
    build = registry.__dict__.get("from_torchlib")
    if not isinstance(build, classmethod):
        yield
        return

    def reused(cls, opset_version=_registration._constants.TORCHLIB_OPSET):
        if opset_version not in _TORCHLIB_REGISTRIES:
            _TORCHLIB_REGISTRIES[opset_version] = build.__func__(cls, opset_version)
        return _TORCHLIB_REGISTRIES[opset_version]

    setattr(registry, "from_torchlib", classmethod(reused))  # noqa: B010 (a patch, for mypy)
    try:
        yield
    finally:
        setattr(registry, "from_torchlib", build)  # noqa: B010


def export_graph(
    module: nn.Module,
    args: tuple,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic: tuple,
) -> None:
    """Exports ``module`` called on ``args`` to the ONNX file ``path`` (torch.export-based, one
    file, weights inside), naming its inputs and outputs; ``dynamic`` gives each input's
    dynamic dimensions (``torch.export.Dim`` by axis)."""
    module.eval()
    with torch.no_grad(), _torchlib_registry_built_once():
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=True,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dynamic,
            verbose=False,
            external_data=False,
        )


def _append_budget_slice(path: Path, num_patches: int, first_output: str = "tokens") -> None:
    """Slices the sorted head's outputs to the budget's ``k``: outputs ``tokens`` and ``indices``."""
    m = onnx.load(str(path))
    g = m.graph
    sorted_tokens, order = (o.name for o in g.output)
    consts: dict[str, np.ndarray] = {
        "sl_n": np.array([num_patches], np.float32),
        "sl_eps": np.array([1e-6], np.float32),
        "sl_one_f": np.array([1.0], np.float32),
        "sl_one_i": np.array([1], np.int64),  # the token axis
        "sl_zero_i": np.array([0], np.int64),
    }
    g.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in consts.items())
    g.node.extend(
        [
            helper.make_node("ReduceMax", ["alpha"], ["sl_amax"], keepdims=1),
            helper.make_node("Mul", ["sl_amax", "sl_n"], ["sl_prod"]),
            helper.make_node("Sub", ["sl_prod", "sl_eps"], ["sl_prod_eps"]),
            helper.make_node("Ceil", ["sl_prod_eps"], ["sl_ceil"]),
            helper.make_node("Max", ["sl_ceil", "sl_one_f"], ["sl_kf"]),
            helper.make_node("Cast", ["sl_kf"], ["sl_k"], to=TensorProto.INT64),
            helper.make_node(
                "Slice", [sorted_tokens, "sl_zero_i", "sl_k", "sl_one_i"], [first_output]
            ),
            helper.make_node("Slice", [order, "sl_zero_i", "sl_k", "sl_one_i"], ["indices"]),
        ]
    )
    d = g.output[0].type.tensor_type.shape.dim[2].dim_value
    del g.output[:]
    g.output.extend(
        [
            helper.make_tensor_value_info(first_output, TensorProto.FLOAT, ["B", "T", d]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, ["B", "K"]),
        ]
    )
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


def export_selector_pipeline(
    ckpt_path: str | Path,
    out_dir: str | Path,
    dataset: str = "digits-canvas",
    data_root: str | None = None,
) -> dict[str, Any]:
    """Exports head and tail of a trained selector checkpoint into ``out_dir`` with its manifest.

    ``out_dir`` is one version folder of a model repository, e.g. ``zoo/digits-vit/1``. Also
    writes a weights-only copy of the checkpoint (no optimizer or resume state). Returns the
    manifest. ``dataset`` names the training data, whose normalisation the manifest carries and
    whose validation split (from ``data_root`` for a dataset on local disk) fits its input check.
    """
    model, ckpt = checkpoint.load_selector_vit(ckpt_path)
    out = _export_pipeline(model, None, Path(out_dir))
    checkpoint.save(
        out / "checkpoint.pt",
        config=ckpt["config"],
        state_dict=model.state_dict(),
        metrics=ckpt.get("metrics", {}),
    )
    return _write_manifest(model, None, out, dataset, data_root)


def export_jscc_pipeline(
    ckpt_path: str | Path,
    out_dir: str | Path,
    dataset: str = "digits-canvas",
    data_root: str | None = None,
) -> dict[str, Any]:
    """The same for a JSCC checkpoint: the encoder joins the head, the decoder the tail."""
    from semlink.models import semcom

    model, ckpt = semcom.load(ckpt_path)
    out = _export_pipeline(model.vit, model.coder, Path(out_dir))
    semcom.save(out / "checkpoint.pt", model, ckpt.get("metrics", {}))
    return _write_manifest(model.vit, model.coder, out, dataset, data_root)


def _export_pipeline(model: SelectorViT, coder: JSCC | None, out: Path) -> Path:
    cfg = model.cfg
    out.mkdir(parents=True, exist_ok=True)
    payload = "symbols" if coder is not None else "tokens"
    width = 2 * coder.cfg.symbols if coder is not None else cfg.embed_dim
    B, T = torch.export.Dim("B", min=1, max=1024), torch.export.Dim("T", min=1, max=cfg.num_patches)
    image = torch.randn(2, cfg.in_chans, cfg.image_size, cfg.image_size)
    snr: tuple = (torch.full((2,), 10.0),) if _snr_conditioned(coder) else ()
    snr_name = ["snr_db"] if snr else []
    export_graph(
        _SortedHead(model, coder),
        (image, torch.full((2,), 0.5), *snr),
        out / "head.onnx",
        ["image", "alpha", *snr_name],
        ["sorted", "order"],
        ({0: B}, {0: B}) + ({0: B},) * len(snr),  # image, alpha[, snr_db]
    )
    _append_budget_slice(out / "head.onnx", cfg.num_patches, payload)
    export_graph(
        _Tail(model, coder),
        (torch.randn(2, 5, width), torch.ones(2, 5), *snr),
        out / "tail.onnx",
        [payload, "token_mask", *snr_name],
        ["logits"],
        ({0: B, 1: T}, {0: B, 1: T}) + ({0: B},) * len(snr),  # payload, token_mask[, snr_db]
    )
    for name in ("head.onnx", "tail.onnx"):
        onnx.checker.check_model(onnx.load(str(out / name)), full_check=True)
    return out


def _write_manifest(
    model: SelectorViT, coder: JSCC | None, out: Path, dataset: str, data_root: str | None
) -> dict[str, Any]:
    manifest = build_manifest(model, out, coder, dataset, data_root)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("exported %s", out)
    return manifest


def input_check(dataset: str, image_size: int, data_root: str | None = None) -> dict[str, Any]:
    """The manifest's ``input_check`` fitted on the dataset's validation split (read from
    ``data_root`` for a dataset on local disk: without it, ``ValueError`` naming
    ``--data-root``, never a model that cannot tell its inputs from others). Each image counts
    twice: as the tensor a client sends over OIP, and as it arrives in an upload (8-bit,
    clipped to [0, 1]), so both are in distribution."""
    from semlink.models.datasets import load_dataset
    from semlink.runtime.input_check import fit
    from semlink.runtime.manifest import Normalisation

    try:
        val = load_dataset(dataset, "val", root=data_root, image_size=image_size)
    except ValueError as exc:  # a dataset on local disk, without its folder
        raise ValueError(
            f"{exc}: the manifest's input check is fitted on its validation split"
        ) from None
    stats = normalisation(dataset)
    norm = Normalisation(dataset, tuple(stats["mean"]), tuple(stats["std"]))  # type: ignore[arg-type]
    uploads = np.concatenate([norm.apply(norm.invert(x) / 255.0) for x in val.images])
    return fit(np.concatenate([val.images, uploads]))


def build_manifest(
    model: SelectorViT,
    out: Path,
    coder: JSCC | None = None,
    dataset: str = "digits-canvas",
    data_root: str | None = None,
) -> dict[str, Any]:
    """What the server and device need to serve the pipeline without torch."""
    cfg = model.cfg
    digest = hashlib.sha256()
    for name in ("head.onnx", "tail.onnx"):
        digest.update((out / name).read_bytes())
    payload = "symbols" if coder is not None else "tokens"
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "kind": "token-selection+jscc" if coder is not None else "token-selection",
        "model_hash": digest.hexdigest()[:16],
        "image_shape": [cfg.in_chans, cfg.image_size, cfg.image_size],
        "num_patches": cfg.num_patches,
        "patch_size": cfg.patch_size,
        "embed_dim": cfg.embed_dim,
        "num_classes": cfg.num_classes,
        "depth": cfg.depth,
        "splits": [cfg.split],
        "head": {
            "file": "head.onnx",
            "inputs": {"image": "FP32", "alpha": "FP32"},
            "outputs": {payload: "FP32", "indices": "INT64"},
        },
        "tail": {
            "file": "tail.onnx",
            "inputs": {payload: "FP32", "token_mask": "FP32"},
            "outputs": {"logits": "FP32"},
        },
        "normalization": normalisation(dataset),
        "input_check": input_check(dataset, cfg.image_size, data_root),
    }
    if coder is not None:
        manifest["jscc"] = {"symbols": coder.cfg.symbols, "channels": ["awgn", "rayleigh", "none"]}
        if coder.cfg.snr_conditioned:
            manifest["jscc"]["snr_range"] = list(coder.cfg.snr_range)
            manifest["head"]["inputs"]["snr_db"] = "FP32"
            manifest["tail"]["inputs"]["snr_db"] = "FP32"
    return manifest
