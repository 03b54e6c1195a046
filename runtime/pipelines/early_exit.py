"""Recursive early-exit network (METHODS §3): the device runs one stretch of blocks at a time
(graph ``step_j`` up to its ``j``-th exit) so its controller can exit, continue or offload at each
exit; an offload after exit ``j`` sends the activations there and the server finishes the
network from them (graph ``server_sj``).

Wire: ``activations`` FP16 | FP32 [B, N, W] and, for a recursive network, ``prev_logp`` FP32
[B, C], the log-probabilities of the exit the device reached; parameter ``split``, the number of
blocks the activations come from. The answer's ``logits`` are the final exit's log-probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from semlink.protocol import params as P
from semlink.protocol.codec import TensorError
from semlink.protocol.params import ParameterError
from semlink.runtime.manifest import ExitSpec, PipelineKind
from semlink.runtime.pipelines.base import (
    Inputs,
    Offload,
    Pipeline,
    Stretch,
    WireOptions,
    Work,
    float_input,
)
from semlink.runtime.repository import ModelVersion


class EarlyExitPipeline(Pipeline):
    """The device's stretches between exits, and the server's continuation from each."""

    kind = PipelineKind.EARLY_EXIT

    def __init__(self, model: ModelVersion) -> None:
        super().__init__(model)
        assert model.manifest.exits is not None  # Manifest.parse guarantees it for this kind
        self.exits: ExitSpec = model.manifest.exits

    def inputs(self) -> list[tuple[str, str, list[int]]]:
        """Activations [B, N, W] (N, W fixed when every split sends the same shape) and, for a
        recursive network, the device exit's log p [B, C]."""
        shapes = self.exits.activation_shapes
        same = all(s == shapes[0] for s in shapes)
        acts = [-1, *shapes[0]] if same else [-1] * (1 + len(shapes[0]))
        out = [("activations", "FP16", acts)]
        if self.exits.recursive:
            out.append(("prev_logp", "FP32", [-1, self.manifest.num_classes]))
        return out

    # -- device --------------------------------------------------------------------------

    def device_graphs(self) -> list[str]:
        """One ``step_j`` graph per device exit."""
        return [f"step_{j}" for j in self.exits.device_exits]

    @property
    def num_stretches(self) -> int:
        """One per device exit."""
        return len(self.exits.device_exits)

    def split_of(self, k: int) -> int:
        """Model blocks behind the device's ``k``-th exit: the ``split`` an offload there names."""
        return self.exits.exit_blocks[self.exits.device_exits[k]]

    def run_stretch(
        self,
        k: int,
        image: np.ndarray,
        budget: float,
        prev: Stretch | None,
        snr_db: float | None = None,
    ) -> Stretch:
        """Runs the blocks to the device's ``k``-th exit, from the image or from ``prev`` (no
        budget or SNR applies: the activations cross the wire as they are)."""
        if k == 0:
            feeds = {"image": image}
        else:
            assert prev is not None
            feeds = {"activations": prev.outputs["activations"]}
            if self.exits.recursive:
                feeds["prev_logp"] = prev.outputs["logp"]
        acts, logp = self.sessions[f"step_{self.exits.device_exits[k]}"].run(None, feeds)
        return Stretch(k, float(np.exp(logp[0]).max()), {"activations": acts, "logp": logp})

    def offload(self, stretch: Stretch, budget: float, rate: float, wire: WireOptions) -> Offload:
        """The activations (FP16 unless fp32 is asked) and, for a recursive network, this exit's
        log p in FP32; ``budget`` and ``rate`` do not apply."""
        dtype = np.float32 if wire.token_format == "fp32" else np.float16
        tensors = {"activations": stretch.outputs["activations"].astype(dtype)}
        if self.exits.recursive:
            tensors["prev_logp"] = stretch.outputs["logp"].astype(np.float32)
        split = self.split_of(stretch.k)
        return Offload(tensors, {P.SPLIT: split}, stretch.outputs["logp"], split, 1.0)

    def answer_locally(self, stretch: Stretch, offload: Offload) -> np.ndarray:
        """The reached exit's log-probabilities."""
        return stretch.outputs["logp"]

    # -- server --------------------------------------------------------------------------

    def server_graphs(self) -> list[str]:
        """One ``server_sj`` graph per device exit."""
        return [f"server_s{j}" for j in self.exits.device_exits]

    def admit(self, inputs: Inputs, params: dict[str, Any]) -> Work:
        """Checks ``split`` and the activations' shape there."""
        splits = list(self.exits.splits)
        split = params.get(P.SPLIT)
        if isinstance(split, bool) or not isinstance(split, int) or split not in splits:
            raise ParameterError(
                f"model {self.model.name!r} is an early-exit network: parameter 'split' must be "
                f"the number of device blocks the activations come from, one of {splits}; "
                f"got {split!r}"
            )
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
        return Work(f"server_s{j}", samples, reply={"split": split}, log={"split": split})

    def run_batch(self, graph: str, samples: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Stacks the samples (every one at this split has the same shape) and runs the graph."""
        feeds = {name: np.stack([s[name] for s in samples]) for name in samples[0]}
        return self.sessions[graph].run(["logp"], feeds)[0].astype(np.float32)
