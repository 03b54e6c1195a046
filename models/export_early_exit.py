"""ONNX export of an early-exit network, per split point (``semlink export early-exit``).

For each exit ``s`` the device holds:

- ``device_s{s}.onnx``: ``image (B, C, H, W)`` -> ``activations`` at exit ``s`` and
  ``exit_logp (B, s+1, classes)``, the log-probabilities of exits ``0..s``;
- ``server_s{s}.onnx``: ``activations``, ``prev_logp (B, classes)`` (exit ``s``'s log p, the
  recursion's carry; absent from plain networks' graphs) -> ``logp (B, classes)`` of the final exit;
- ``step_{s}.onnx``: one stretch, for a device that decides exit by exit whether to stop, continue
  or offload: ``image`` (``s = 0``) or ``activations``, ``prev_logp`` of exit ``s-1`` ->
  ``next_activations``, ``logp`` of exit ``s``.

The manifest lists the graphs, the activation shapes, the FLOPs of each stretch and the bytes an
offload at each split sends.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from semlink.models import checkpoint
from semlink.models.datasets import normalisation
from semlink.models.early_exit import EarlyExitNet, config_dict, count_segment_flops
from semlink.models.eval_early_exit import activation_bytes
from semlink.models.export import export_graph, input_check
from semlink.models.train_early_exit import load_early_exit
from semlink.runtime.manifest import MANIFEST_VERSION


class _Device(nn.Module):
    def __init__(self, model: EarlyExitNet, split: int) -> None:
        super().__init__()
        self.model, self.split = model, split

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, outs = self.model.forward_device(image, self.split)
        return x, torch.stack(outs, dim=1)


class _Server(nn.Module):
    def __init__(self, model: EarlyExitNet, split: int) -> None:
        super().__init__()
        self.model, self.split = model, split

    def forward(
        self, activations: torch.Tensor, prev_logp: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model.forward_server(activations, prev_logp, self.split)


class _Step(nn.Module):
    def __init__(self, model: EarlyExitNet, j: int) -> None:
        super().__init__()
        self.model, self.j = model, j

    def forward(
        self, x: torch.Tensor, prev_logp: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.segment(self.j, x, prev_logp)


def example_inputs(model: EarlyExitNet) -> dict[str, Any]:
    """The image and each exit's activations and log p, for a batch of 2."""
    cfg = model.cfg
    image = torch.randn(2, cfg.in_chans, cfg.image_size, cfg.image_size)
    acts, logps = [], []
    with torch.no_grad():
        x, prev = image, None
        for j in range(model.num_exits):
            x, prev = model.segment(j, x, prev)
            acts.append(x)
            logps.append(prev)
    return {"image": image, "activations": acts, "logp": logps}


def _carry(model: EarlyExitNet, activations: torch.Tensor, logp: torch.Tensor) -> dict:
    """Inputs of a graph that continues from an exit: the activations, and for recursive networks
    the exit's log p."""
    return {"activations": activations} | ({"prev_logp": logp} if model.cfg.recursive else {})


def export_early_exit_pipeline(
    ckpt_path: str | Path,
    out_dir: str | Path,
    dataset: str = "digits-canvas",
    device_blocks: int | None = None,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Exports every device split's graphs into ``out_dir`` with the manifest and a weights-only
    checkpoint. ``device_blocks`` moves where the device's part ends (default: the checkpoint's;
    training does not depend on it, every exit is trained alike); ``data_root`` is the folder of
    a dataset on local disk, whose validation split fits the input check. Returns the
    manifest."""
    model, ckpt = load_early_exit(ckpt_path)
    if device_blocks is not None:
        model.cfg.device_blocks = device_blocks
        model.cfg.__post_init__()  # checks it against the exits
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ex = example_inputs(model)
    graphs: dict[str, dict[str, Any]] = {}

    def save(
        name: str, module: nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str]
    ) -> None:
        B = torch.export.Dim("B", min=1, max=1024)
        path = out / f"{name}.onnx"
        export_graph(
            module,
            tuple(inputs.values()),
            path,
            list(inputs),
            outputs,
            tuple({0: B} for _ in inputs),
        )
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        graphs[name] = {"file": path.name, "inputs": list(inputs), "outputs": outputs}

    image = {"image": ex["image"]}
    for s in model.cfg.device_exits:
        save(f"device_s{s}", _Device(model, s), image, ["activations", "exit_logp"])
        carry = _carry(model, ex["activations"][s], ex["logp"][s])
        save(f"server_s{s}", _Server(model, s), carry, ["logp"])
        before = image if s == 0 else _carry(model, ex["activations"][s - 1], ex["logp"][s - 1])
        save(f"step_{s}", _Step(model, s), before, ["next_activations", "logp"])
    checkpoint.save(
        out / "checkpoint.pt",
        kind="early-exit",
        config=config_dict(model.cfg),
        state_dict=model.state_dict(),
        metrics=ckpt.get("metrics", {}),
    )
    manifest = build_manifest(model, out, graphs, ex, dataset, data_root)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def build_manifest(
    model: EarlyExitNet,
    out: Path,
    graphs: dict[str, dict[str, Any]],
    ex: dict[str, Any],
    dataset: str = "digits-canvas",
    data_root: str | None = None,
) -> dict[str, Any]:
    """What the device and the server need to run the splits without torch."""
    cfg = model.cfg
    digest = hashlib.sha256()
    for g in graphs.values():
        digest.update((out / g["file"]).read_bytes())
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "kind": "early-exit",
        "model_hash": digest.hexdigest()[:16],
        "backbone": cfg.backbone,
        "recursive": cfg.recursive,
        "image_shape": [cfg.in_chans, cfg.image_size, cfg.image_size],
        "num_classes": cfg.num_classes,
        "exit_blocks": list(model.exits),
        "device_exits": cfg.device_exits,
        "activation_shapes": [list(a.shape[1:]) for a in ex["activations"]],
        "segment_flops": count_segment_flops(model),
        "offload_bytes": activation_bytes(model),
        "graphs": graphs,
        "normalization": normalisation(dataset),
        "input_check": input_check(dataset, cfg.image_size, data_root),
    }
    return manifest
