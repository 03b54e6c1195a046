"""A trained PPO policy's decision as an ONNX graph the device runs (``obs -> logits``), checked
against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from semlink.runtime.offload_policy import OBS_DIM


class PolicyLogits(nn.Module):
    """The deterministic part of an SB3 actor-critic policy: observation -> action logits."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.extractor = policy.mlp_extractor.policy_net
        self.action_net = policy.action_net

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.action_net(self.extractor(obs))


def export_policy(policy: Any, path: str | Path, obs_dim: int = OBS_DIM) -> None:
    """Writes the policy's logits graph to ONNX and checks it against PyTorch."""
    import onnx
    import onnxruntime as ort

    from semlink.models.export import export_graph

    module = PolicyLogits(policy).eval()
    obs = torch.rand(4, obs_dim)
    B = torch.export.Dim("B", min=1, max=4096)
    export_graph(module, (obs,), Path(path), ["obs"], ["logits"], ({0: B},))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    got = ort.InferenceSession(str(path)).run(None, {"obs": obs.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(obs).numpy(), atol=1e-5)


__all__ = ["PolicyLogits", "export_policy"]
