"""ONNX export of the any-split network (``semlink export any-split``).

The graphs (``B`` samples, ``N`` patches, ``T`` tokens sent, ``d`` width, ``d_c`` symbols):

- device: ``step_k`` (k = 1..device_blocks): ``image`` (k = 1) or ``activations`` (B, 1+N, d)
  and ``prev_logp`` (B, C) of exit k-1 -> ``next_activations`` after block k, ``logp`` of exit k;
  ``select_s``: ``activations``, ``alpha`` (B,) -> ``key`` (B, N), the selector's key (the
  device keeps the top ``ceil(alpha N)`` patches); ``encode_s``: ``tokens`` (B, T, d),
  ``snr_db`` (B,) -> ``symbols`` (B, T, 2 d_c), real then imaginary parts, unnormalised (the
  device truncates to its rate and normalises);
- server: ``tail_s``: ``tokens`` (B, T, d), ``token_mask`` (B, T) -> ``logits``; ``decode_s``:
  ``symbols`` (B, T, 2 d_c) received and zero-filled, ``snr_db`` (B,) -> ``tokens``; ``full``:
  ``image`` -> ``logits`` (the whole network, for an uploaded picture).

The graphs share their weights: every initializer of 1 KiB or more is stored once, by content,
in ``weights.bin`` (fp16 with ``--fp16-weights``, cast back to fp32 as each session loads), and
each graph points into it (ONNX external data). The manifest lists the graphs, the geometry, the
FLOPs of every stretch and the option grids the controllers choose from.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from semlink.models import checkpoint
from semlink.models.any_split import AnySplitViT, config_dict, count_flops
from semlink.models.datasets import normalisation
from semlink.models.export import export_graph, input_check
from semlink.models.train_any_split import KIND, load_any_split
from semlink.runtime.manifest import MANIFEST_VERSION

log = logging.getLogger(__name__)

WEIGHTS = "weights.bin"
SHARED_MIN_BYTES = 1024  # smaller initializers stay inside their graph
ALIGN = 64


@dataclass
class OptionGrid:
    """The options a frame has, as the manifest lists them for the controllers."""

    budgets: tuple[float, ...] = (0.1, 0.25, 0.5)
    """Token budgets offered at every split."""
    rates: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4)
    """JSCC rates offered with every budget (besides int8 tokens)."""
    jpeg_qualities: tuple[int, ...] = (50, 75, 90)
    """JPEG qualities of an uploaded picture."""


class _Step(nn.Module):
    def __init__(self, model: AnySplitViT, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(
        self, x: torch.Tensor, prev_logp: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.step(self.k, x, prev_logp)


class _Select(nn.Module):
    def __init__(self, model: AnySplitViT, s: int) -> None:
        super().__init__()
        self.model, self.s = model, s

    def forward(self, activations: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return self.model.selector_key(self.s, activations, alpha)


class _Encode(nn.Module):
    def __init__(self, model: AnySplitViT, s: int) -> None:
        super().__init__()
        self.coder = model.coder(s)

    def forward(self, tokens: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.coder.encoder(tokens, snr_db), dim=-1)


class _Decode(nn.Module):
    def __init__(self, model: AnySplitViT, s: int) -> None:
        super().__init__()
        self.coder = model.coder(s)

    def forward(self, symbols: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
        re, im = symbols.chunk(2, dim=-1)
        return self.coder.decoder(re, im, snr_db)


class _Tail(nn.Module):
    def __init__(self, model: AnySplitViT, s: int) -> None:
        super().__init__()
        self.model, self.s = model, s

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        return self.model.tail(self.s, tokens, token_mask)


class _Full(nn.Module):
    def __init__(self, model: AnySplitViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.full(image)


def export_any_split(
    ckpt_path: str | Path,
    out_dir: str | Path,
    dataset: str = "digits-canvas",
    grid: OptionGrid | None = None,
    fp16_weights: bool = False,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Exports every graph of an any-split checkpoint into ``out_dir`` with shared weights, the
    manifest and a weights-only checkpoint (fp16 with ``fp16_weights``). Returns the manifest.
    ``dataset``'s validation split (from ``data_root`` for one on local disk) fits its input
    check."""
    model, ckpt = load_any_split(ckpt_path)
    grid = grid or OptionGrid()
    cfg = model.cfg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    B = torch.export.Dim("B", min=1, max=1024)
    T = torch.export.Dim("T", min=1, max=cfg.num_patches)
    d = cfg.embed_dim
    image = torch.randn(2, cfg.in_chans, cfg.image_size, cfg.image_size)
    graphs: dict[str, dict[str, Any]] = {}

    def save(
        name: str,
        module: nn.Module,
        inputs: dict[str, tuple[torch.Tensor, dict]],
        outputs: list[str],
    ) -> None:
        export_graph(
            module,
            tuple(x for x, _ in inputs.values()),
            out / f"{name}.onnx",
            list(inputs),
            outputs,
            tuple(dims for _, dims in inputs.values()),
        )
        graphs[name] = {"file": f"{name}.onnx", "inputs": list(inputs), "outputs": outputs}

    acts: torch.Tensor = image
    prev: torch.Tensor | None = None
    with torch.no_grad():
        for k in cfg.splits:
            inputs = {"image": (image, {0: B})} if k == 1 else {"activations": (acts, {0: B})}
            if k > 1 and cfg.recursive and prev is not None:
                inputs["prev_logp"] = (prev, {0: B})
            save(f"step_{k}", _Step(model, k), inputs, ["next_activations", "logp"])
            acts, prev = model.step(k, acts if k > 1 else image, prev)
            alpha = torch.full((2,), 0.25)
            save(
                f"select_{k}",
                _Select(model, k),
                {"activations": (acts, {0: B}), "alpha": (alpha, {0: B})},
                ["key"],
            )
            tokens, snr = torch.randn(2, 5, d), torch.zeros(2)
            save(
                f"encode_{k}",
                _Encode(model, k),
                {"tokens": (tokens, {0: B, 1: T}), "snr_db": (snr, {0: B})},
                ["symbols"],
            )
            symbols = torch.randn(2, 5, 2 * cfg.symbols)
            save(
                f"decode_{k}",
                _Decode(model, k),
                {"symbols": (symbols, {0: B, 1: T}), "snr_db": (snr, {0: B})},
                ["tokens"],
            )
            save(
                f"tail_{k}",
                _Tail(model, k),
                {"tokens": (tokens, {0: B, 1: T}), "token_mask": (torch.ones(2, 5), {0: B, 1: T})},
                ["logits"],
            )
    save("full", _Full(model), {"image": (image, {0: B})}, ["logits"])
    share_weights(out, [g["file"] for g in graphs.values()], fp16_weights)
    state = model.state_dict()
    if fp16_weights:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    checkpoint.save(
        out / "checkpoint.pt",
        kind=KIND,
        config=config_dict(cfg),
        state_dict=state,
        metrics=ckpt.get("metrics", {}),
    )
    manifest = build_manifest(model, out, graphs, grid, dataset, data_root)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info(
        "exported %s (%d graphs, %s shared weights)",
        out,
        len(graphs),
        "fp16" if fp16_weights else "fp32",
    )
    return manifest


def share_weights(folder: Path, files: list[str], fp16: bool = False) -> int:
    """Moves every initializer of at least :data:`SHARED_MIN_BYTES` of the graphs ``files`` into
    one ``weights.bin`` beside them, each distinct tensor once (graphs that fold the same weight
    the same way share it), and points the graphs at it. With ``fp16`` float32 weights are stored
    as float16 and cast back by a node each graph runs once, when ONNX Runtime folds constants
    at load. Returns the size of ``weights.bin`` in bytes."""
    stored: dict[str, tuple[int, int, int]] = {}  # digest -> (offset, length, data type)
    blob = bytearray()
    for file in files:
        path = folder / file
        model = onnx.load(str(path))
        keep, casts = [], []
        for init in model.graph.initializer:
            array = numpy_helper.to_array(init)
            if array.nbytes < SHARED_MIN_BYTES:
                keep.append(init)
                continue
            half = fp16 and array.dtype == np.float32
            data = (array.astype(np.float16) if half else array).tobytes()
            digest = hashlib.sha256(
                data + str(array.shape).encode() + str(half).encode()
            ).hexdigest()
            if digest not in stored:
                blob.extend(b"\0" * (-len(blob) % ALIGN))
                stored[digest] = (
                    len(blob),
                    len(data),
                    TensorProto.FLOAT16 if half else init.data_type,
                )
                blob.extend(data)
            offset, length, dtype = stored[digest]
            name = f"{init.name}__fp16" if half else init.name
            ext = onnx.TensorProto(name=name, data_type=dtype, dims=list(array.shape))
            ext.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (
                ("location", WEIGHTS),
                ("offset", str(offset)),
                ("length", str(length)),
            ):
                ext.external_data.add(key=key, value=value)
            keep.append(ext)
            if half:
                casts.append(helper.make_node("Cast", [name], [init.name], to=TensorProto.FLOAT))
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        for node in reversed(casts):
            model.graph.node.insert(0, node)
        onnx.save(model, str(path))
    (folder / WEIGHTS).write_bytes(bytes(blob))
    for file in files:  # loads and checks with its external data
        onnx.checker.check_model(str(folder / file), full_check=True)
    return len(blob)


def build_manifest(
    model: AnySplitViT,
    out: Path,
    graphs: dict[str, dict[str, Any]],
    grid: OptionGrid,
    dataset: str = "digits-canvas",
    data_root: str | None = None,
) -> dict[str, Any]:
    """What the device and the server need to serve every option without torch."""
    cfg = model.cfg
    digest = hashlib.sha256()
    for name in sorted(graphs):
        digest.update((out / graphs[name]["file"]).read_bytes())
    digest.update((out / WEIGHTS).read_bytes())
    flops = count_flops(model)
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "kind": KIND,
        "model_hash": digest.hexdigest()[:16],
        "image_shape": [cfg.in_chans, cfg.image_size, cfg.image_size],
        "num_classes": cfg.num_classes,
        "num_patches": cfg.num_patches,
        "patch_size": cfg.patch_size,
        "embed_dim": cfg.embed_dim,
        "depth": cfg.depth,
        "splits": list(cfg.splits),
        "recursive": cfg.recursive,
        "jscc": {
            "symbols": cfg.symbols,
            "channels": ["awgn", "rayleigh", "none"],
            "snr_range": list(cfg.jscc_config().snr_range),
        },
        "options": {
            "budgets": list(grid.budgets),
            "rates": list(grid.rates),
            "jpeg_qualities": list(grid.jpeg_qualities),
        },
        "segment_flops": flops,
        "graphs": graphs,
        "normalization": normalisation(dataset),
    }
    manifest["input_check"] = input_check(dataset, cfg.image_size, data_root)
    return manifest


__all__ = ["OptionGrid", "export_any_split", "share_weights"]
