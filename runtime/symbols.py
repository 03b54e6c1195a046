"""Truncation and power normalisation of JSCC codes, torch-free (the device runs it on numpy) and
shared with training (torch tensors), so both sides do exactly the same maths (docs/methods.md#jscc)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def symbols_kept(d_c: int, rate: float) -> int:
    """``m = ceil(d_c * rate)``, at least 1; ``rate`` must be in (0, 1]."""
    if not 0.0 < rate <= 1.0 or math.isnan(rate):
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    return max(1, math.ceil(d_c * rate - 1e-6))


def channel_uses(k: int, m: int, image_values: int) -> float:
    """Complex channel uses per source value: ``k * m / (H * W * C)``."""
    return k * m / image_values


def symbol_mask(m: Any, d_c: int, like: Any) -> Any:
    """(B, 1, d_c) mask, ones on each sample's first ``m[b]`` symbols; torch or numpy like ``like``."""
    if type(like).__module__.startswith("torch"):
        import torch

        return (torch.arange(d_c, device=like.device)[None, None, :] < m.reshape(-1, 1, 1)).to(
            like.dtype
        )
    return (np.arange(d_c)[None, None, :] < np.asarray(m).reshape(-1, 1, 1)).astype(like.dtype)


def normalise(re: Any, im: Any, mask: Any) -> tuple[Any, Any]:
    """Scales each token's kept symbols to unit average power; dropped symbols become 0."""
    re, im = re * mask, im * mask
    power = (re * re + im * im).sum(-1)[..., None] / mask.sum(-1)[..., None]
    scale = (power + 1e-12) ** -0.5
    return re * scale, im * scale
