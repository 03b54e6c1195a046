"""Recursive early-exit network (docs/methods.md#early-exits): the device runs one stretch of
blocks at a time (graph ``step_j`` up to its ``j``-th exit) so its controller can exit, continue
or offload at each exit; an offload after exit ``j`` sends the activations there and the server
finishes the network from them (graph ``server_sj``).

Wire: ``activations`` FP16 | FP32 [B, N, W] and, for a recursive network, ``prev_logp`` FP32
[B, C], the log-probabilities of the exit the device reached; parameter ``split``, the number of
blocks the activations come from. The answer's ``logits`` are the final exit's log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from semlink.protocol import params as P
from semlink.protocol import reply as R
from semlink.protocol.codec import TensorError
from semlink.runtime.manifest import Manifest, ManifestError, Reader
from semlink.runtime.pipelines.base import (
    EXIT,
    OFFLOAD,
    Inputs,
    Offload,
    Option,
    Pipeline,
    Stretch,
    WireOptions,
    Work,
    float_input,
    split_param,
    step_feeds,
)
from semlink.runtime.repository import ModelVersion


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

    @classmethod
    def read(cls, manifest: Manifest) -> ExitSpec:
        """Parses the exit fields and checks the graphs they need; raises ``ManifestError``."""
        r, where = manifest.reader(), manifest.where
        spec = cls(
            exit_blocks=r.ints("exit_blocks"),
            device_exits=r.ints("device_exits"),
            activation_shapes=tuple(
                Reader({"s": s}, f"{where}: activation_shapes").ints("s")
                for s in r.get("activation_shapes", list)
            ),
            recursive=bool(manifest.doc.get("recursive", False)),
        )
        if len(spec.activation_shapes) != len(spec.exit_blocks):
            raise ManifestError(f"{where}: one activation shape per exit block is needed")
        for j in spec.device_exits:
            if not 0 <= j < len(spec.exit_blocks):
                raise ManifestError(f"{where}: device exit {j} is not an exit block index")
            manifest.need_graphs(f"step_{j}", f"server_s{j}")
        return spec

    @property
    def splits(self) -> tuple[int, ...]:
        """The ``split`` parameter values an offload may carry: device blocks behind each exit."""
        return tuple(self.exit_blocks[j] for j in self.device_exits)


class EarlyExitPipeline(Pipeline):
    """The device's stretches between exits, and the server's continuation from each."""

    kind = "early-exit"
    controllers = ("rl", "threshold", "growth", "fixed", "local")

    def __init__(self, model: ModelVersion) -> None:
        super().__init__(model)
        self.exits = ExitSpec.read(model.manifest)

    # -- rules --------------------------------------------------------------------------------

    def inputs(self) -> list[tuple[str, str, list[int]]]:
        """Activations [B, N, W] (N, W fixed when every split sends the same shape) and, for a
        recursive network, the device exit's log p [B, C]."""
        shapes = self.exits.activation_shapes
        same = all(s == shapes[0] for s in shapes)
        out = [("activations", "FP16", [-1, *shapes[0]] if same else [-1] * (1 + len(shapes[0])))]
        if self.exits.recursive:
            out.append(("prev_logp", "FP32", [-1, self.manifest.num_classes]))
        return out

    def options(self) -> list[Option]:
        """Answer at each device exit, or offload the activations there."""
        splits = self.exits.splits
        return [*(Option(EXIT, s) for s in splits), *(Option(OFFLOAD, s) for s in splits)]

    # -- device -------------------------------------------------------------------------------

    def device_graphs(self) -> list[str]:
        """One ``step_j`` graph per device exit."""
        return [f"step_{j}" for j in self.exits.device_exits]

    @property
    def num_stretches(self) -> int:
        """One per device exit."""
        return len(self.exits.device_exits)

    def stretches_for(self, option: Option) -> int:
        """The stretches up to the option's exit."""
        return self.exits.splits.index(option.split) + 1

    def run_stretch(
        self,
        k: int,
        image: np.ndarray,
        prev: Stretch | None,
        option: Option,
        snr_db: float | None = None,
    ) -> Stretch:
        """Runs the blocks to the device's ``k``-th exit, from the image or from ``prev``."""
        feeds = step_feeds(k, image, prev, self.exits.recursive)
        acts, logp = self.sessions[f"step_{self.exits.device_exits[k]}"].run(None, feeds)
        return Stretch(
            k,
            self.exits.splits[k],
            float(np.exp(logp[0]).max()),
            {"activations": acts, "logp": logp},
        )

    def pack(
        self, stretch: Stretch | None, option: Option, wire: WireOptions, image: np.ndarray
    ) -> Offload:
        """The activations (FP16 unless fp32 is asked) and, for a recursive network, this exit's
        log p in FP32; nothing for an answer at the exit."""
        assert stretch is not None
        if option.action == EXIT:
            return Offload(option, {}, {})
        dtype = np.float32 if wire.token_format == "fp32" else np.float16
        tensors = {"activations": stretch.outputs["activations"].astype(dtype)}
        if self.exits.recursive:
            tensors["prev_logp"] = stretch.outputs["logp"].astype(np.float32)
        return Offload(option, tensors, {P.SPLIT: stretch.split})

    def answer_locally(self, stretch: Stretch, offload: Offload) -> np.ndarray:
        """The reached exit's log-probabilities."""
        return stretch.outputs["logp"]

    # -- server -------------------------------------------------------------------------------

    def server_graphs(self) -> list[str]:
        """One ``server_sj`` graph per device exit."""
        return [f"server_s{j}" for j in self.exits.device_exits]

    def admit(self, inputs: Inputs, params: dict[str, Any]) -> Work:
        """Checks ``split`` and the activations' shape there."""
        self.refuse_unknown(params, frozenset({P.SPLIT}))
        split = split_param(params, self.exits.splits, self.model.name, "the activations")
        j = self.exits.exit_blocks.index(split)
        acts = float_input(inputs, "activations", self.exits.activation_shapes[j])
        samples = [{"activations": a} for a in acts]
        if self.exits.recursive:
            prev = float_input(inputs, "prev_logp", [self.manifest.num_classes])
            if prev.shape[0] != acts.shape[0]:
                raise TensorError(
                    "inputs 'activations' and 'prev_logp' must have the same batch size"
                )
            for s, p in zip(samples, prev, strict=True):
                s["prev_logp"] = p
        return Work(f"server_s{j}", samples, reply={R.SPLIT: split}, log={"split": split})

    def run_batch(self, graph: str, samples: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Stacks the samples (every one at this split has the same shape) and runs the graph."""
        feeds = {name: np.stack([s[name] for s in samples]) for name in samples[0]}
        return self.sessions[graph].run(["logp"], feeds)[0].astype(np.float32)
