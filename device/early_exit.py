"""The device's part of an early-exit network on ONNX Runtime: one graph per stretch between
exits (``step_j``), run one at a time so the controller can stop, continue or offload at each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from server.repository import ModelVersion


@dataclass
class ExitOutput:
    activations: np.ndarray  # what an offload at this exit sends
    logp: np.ndarray  # (1, C) log-probabilities of this exit (the recursion's carry)

    @property
    def probabilities(self) -> np.ndarray:
        return np.exp(self.logp[0])

    @property
    def confidence(self) -> float:
        return float(self.probabilities.max())


class EarlyExitPipeline:
    def __init__(self, model: ModelVersion) -> None:
        self.model = model
        m = model.manifest
        self.device_exits: list[int] = [int(j) for j in m["device_exits"]]
        self.exit_blocks: list[int] = [int(b) for b in m["exit_blocks"]]
        self.recursive = bool(m.get("recursive"))
        self.steps = [model.session(f"step_{j}", threads=1) for j in self.device_exits]

    @property
    def num_exits(self) -> int:
        return len(self.device_exits)

    def split_of(self, k: int) -> int:
        """Device blocks behind the device's ``k``-th exit: the ``split`` an offload there names."""
        return self.exit_blocks[self.device_exits[k]]

    def step(self, k: int, image: np.ndarray, prev: ExitOutput | None) -> ExitOutput:
        """Runs the stretch to the device's ``k``-th exit, from the image or the previous exit."""
        if k == 0:
            feeds = {"image": image}
        else:
            assert prev is not None
            feeds = {"activations": prev.activations}
            if self.recursive:
                feeds["prev_logp"] = prev.logp
        acts, logp = self.steps[k].run(None, feeds)
        return ExitOutput(acts, logp)

    def wire(self, out: ExitOutput, token_format: str) -> dict[str, np.ndarray]:
        """The tensors an offload sends: activations (fp16 unless fp32 is asked for) and, for
        recursive networks, this exit's log p in fp32."""
        dtype = np.float32 if token_format == "fp32" else np.float16
        tensors = {"activations": out.activations.astype(dtype)}
        if self.recursive:
            tensors["prev_logp"] = out.logp.astype(np.float32)
        return tensors
