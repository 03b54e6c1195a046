"""Nested deep joint source-channel coding of semantic tokens (docs/methods.md#jscc).

Per kept token, the encoder maps the real ``d``-vector to ``d_c`` complex symbols (two small MLPs,
real and imaginary parts). At rate ``r`` only the first ``m = ceil(d_c * r)`` symbols are sent,
normalised to unit average power per token; the receiver zero-fills the rest and the decoder maps
the ``2 d_c`` reals back to ``d``. The coder is *nested*: trained with a random truncation per
sample, so one coder serves every rate at run time (the published code trains one per rate).

Cost: ``channel_uses = k * m / (H * W * C)`` complex symbols per source value.

The coder is *SNR-adaptive* (semlink's addition; the attention-feature idea of ADJSCC, Xu et al.
2021): the channel's SNR, clamped to the training range, scales and shifts the hidden layer of
every MLP (FiLM), so one coder picks its code for the channel it will cross. Trained over
[-20, 20] dB without it, the coder settles for one code for every SNR and loses ~5 points at
10 dB against the noiseless model. The device knows the SNR it sends at, the receiver the SNR it
received at; without one (a noiseless link) both use the top of the range.

The symbol maths (truncation mask, power normalisation) lives in :mod:`runtime.symbols`, written
once for torch and numpy, so the device truncates and normalises without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from semlink.runtime import channel
from semlink.runtime.symbols import channel_uses, normalise, symbol_mask, symbols_kept

RATES = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


@dataclass
class JSCCConfig:
    embed_dim: int = 96
    symbols: int = 96  # d_c: complex symbols per token at rate 1 (METHODS: d -> d*r complex)
    hidden: int = 256
    snr_conditioned: bool = True
    """FiLM on the SNR in the encoder and the decoder; checkpoints from before it load as False."""
    snr_range: tuple[float, float] = (-20.0, 20.0)
    """The SNRs (dB) the coder was trained for (training sets it from its SNR range); the
    conditioning clamps to them."""


def snr_feature(snr_db: torch.Tensor | None, cfg: JSCCConfig, like: torch.Tensor) -> torch.Tensor:
    """The conditioning input (B, 1, 1) in [-1, 1], of ``like``'s (B, ...) batch and dtype: the
    SNR clamped to ``cfg.snr_range``; no SNR (a noiseless link) is the top of the range."""
    lo, hi = cfg.snr_range
    if snr_db is None:
        return like.new_ones(like.shape[0], 1, 1)  # shape[0], not len(): stays dynamic in ONNX
    snr = snr_db.reshape(-1, 1, 1).to(like).clamp(lo, hi)
    return (snr - (lo + hi) / 2) / ((hi - lo) / 2)


class _MLP(nn.Module):
    """Linear, GELU, linear; with ``film`` the SNR feature scales and shifts the hidden layer
    (zero-initialised, so training starts from the plain MLP)."""

    def __init__(self, d_in: int, hidden: int, d_out: int, film: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))
        self.film: nn.Sequential | None = None
        if film:
            out = nn.Linear(64, 2 * hidden)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.film = nn.Sequential(nn.Linear(1, 64), nn.GELU(), out)

    def forward(self, x: torch.Tensor, snr: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, T, d_in); ``snr`` (B, 1, 1) from :func:`snr_feature`, needed with FiLM."""
        if self.film is None:
            return self.net(x)
        assert snr is not None, "an SNR-conditioned MLP needs the SNR feature"
        scale, shift = self.film(snr).chunk(2, dim=-1)
        return self.net[2](self.net[1](self.net[0](x) * (1 + scale) + shift))


class JSCCEncoder(nn.Module):
    def __init__(self, cfg: JSCCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.real = _MLP(cfg.embed_dim, cfg.hidden, cfg.symbols, cfg.snr_conditioned)
        self.imag = _MLP(cfg.embed_dim, cfg.hidden, cfg.symbols, cfg.snr_conditioned)

    def forward(
        self, tokens: torch.Tensor, snr_db: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, T, d) -> unnormalised symbols (re, im), each (B, T, d_c), coded for the
        SNR ``snr_db`` (B,) dB the symbols will cross (None: noiseless)."""
        x = self.norm(tokens)
        snr = snr_feature(snr_db, self.cfg, x) if self.cfg.snr_conditioned else None
        return self.real(x, snr), self.imag(x, snr)


class JSCCDecoder(nn.Module):
    def __init__(self, cfg: JSCCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mlp = _MLP(2 * cfg.symbols, cfg.hidden, cfg.embed_dim, cfg.snr_conditioned)

    def forward(
        self, re: torch.Tensor, im: torch.Tensor, snr_db: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Received, zero-filled symbols (B, T, d_c) each, at SNR ``snr_db`` (B,) dB (None:
        noiseless) -> tokens (B, T, d)."""
        snr = snr_feature(snr_db, self.cfg, re) if self.cfg.snr_conditioned else None
        return self.mlp(torch.cat([re, im], dim=-1), snr)


__all__ = [
    "JSCC",
    "JSCCConfig",
    "RATES",
    "channel_uses",
    "normalise",
    "snr_feature",
    "symbol_mask",
    "symbols_kept",
    "transmit",
]


class JSCC(nn.Module):
    """Encoder + decoder; the channel sits between them (see :mod:`models.channel`)."""

    def __init__(self, cfg: JSCCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = JSCCEncoder(cfg)
        self.decoder = JSCCDecoder(cfg)


def transmit(
    coder: JSCC,
    patches: torch.Tensor,
    m: torch.Tensor,
    snr_db: torch.Tensor,
    kind: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Encode, keep the first ``m[b]`` symbols, normalise, pass the channel, zero-fill, decode.

    ``patches`` (B, T, d), ``m`` (B,) int, ``snr_db`` (B,) dB. Returns received tokens (B, T, d).
    An SNR-conditioned coder codes and decodes for ``snr_db`` (for ``kind`` none: noiseless).
    """
    cond = None if kind == "none" else snr_db
    re, im = coder.encoder(patches, cond)
    mask = symbol_mask(m, coder.cfg.symbols, re)
    re, im = normalise(re, im, mask)

    def normal(shape: tuple[int, ...]) -> torch.Tensor:
        # drawn on the CPU (the generator's device), so a seed gives the same noise anywhere
        return torch.randn(shape, generator=generator).to(patches.device)

    re, im = channel.apply(kind, re, im, snr_db.reshape(-1, 1, 1), normal, power=1.0)
    return coder.decoder(re * mask, im * mask, cond)
