"""Nested deep joint source-channel coding of semantic tokens (METHODS §2).

Per kept token, the encoder maps the real ``d``-vector to ``d_c`` complex symbols (two small MLPs,
real and imaginary parts). At rate ``r`` only the first ``m = ceil(d_c * r)`` symbols are sent,
normalised to unit average power per token; the receiver zero-fills the rest and the decoder maps
the ``2 d_c`` reals back to ``d``. The coder is *nested*: trained with a random truncation per
sample, so one coder serves every rate at run time (the published code trains one per rate).

Cost: ``channel_uses = k * m / (H * W * C)`` complex symbols per source value.

The symbol maths (truncation mask, power normalisation) lives in :mod:`models.symbols`, written
once for torch and numpy, so the device truncates and normalises without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from semlink.runtime.symbols import channel_uses, normalise, symbol_mask, symbols_kept

RATES = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


@dataclass
class JSCCConfig:
    embed_dim: int = 96
    symbols: int = 96  # d_c: complex symbols per token at rate 1 (METHODS: d -> d*r complex)
    hidden: int = 256


class _MLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class JSCCEncoder(nn.Module):
    def __init__(self, cfg: JSCCConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.real = _MLP(cfg.embed_dim, cfg.hidden, cfg.symbols)
        self.imag = _MLP(cfg.embed_dim, cfg.hidden, cfg.symbols)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, T, d) -> unnormalised symbols (re, im), each (B, T, d_c)."""
        x = self.norm(tokens)
        return self.real(x), self.imag(x)


class JSCCDecoder(nn.Module):
    def __init__(self, cfg: JSCCConfig) -> None:
        super().__init__()
        self.mlp = _MLP(2 * cfg.symbols, cfg.hidden, cfg.embed_dim)

    def forward(self, re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
        """Received, zero-filled symbols (B, T, d_c) each -> tokens (B, T, d)."""
        return self.mlp(torch.cat([re, im], dim=-1))


__all__ = [
    "JSCC",
    "JSCCConfig",
    "RATES",
    "channel_uses",
    "normalise",
    "symbol_mask",
    "symbols_kept",
]


class JSCC(nn.Module):
    """Encoder + decoder; the channel sits between them (see :mod:`models.channel`)."""

    def __init__(self, cfg: JSCCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = JSCCEncoder(cfg)
        self.decoder = JSCCDecoder(cfg)
