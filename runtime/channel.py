"""Channel models (docs/methods.md#jscc), one definition of the maths for torch (training) and numpy (the
server applies the channel at the receiver at run time, without torch).

Complex symbols are carried as a pair of real arrays ``(re, im)`` of the same shape; the last
axis holds one transmission's symbols (e.g. one token's ``d_c`` symbols) and noise power is set
per transmission from the *mean squared* magnitude ``P`` of what was sent:

- AWGN: ``y = x + n``, ``n ~ CN(0, P / 10^(SNR/10))``.
- Rayleigh block fading: ``y = h x + n``, one ``h ~ CN(0, 1)`` per transmission (all symbols of a
  sample), equalised at the receiver with known ``h``: ``x_hat = y / h``.
- Ideal digital: noiseless, but only ``channel_uses * log2(1 + SNR)`` bits get through
  (:func:`digital_capacity_bits`), for the digital baselines.

``normal(shape)`` draws standard normal samples in the caller's framework (a seeded
``torch.Generator`` or ``numpy.random.Generator``), so both paths are reproducible.

SNR is in dB and must lie in [-50, 100]; NaN is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

SNR_MIN_DB = -50.0
SNR_MAX_DB = 100.0
CHANNELS = ("awgn", "rayleigh", "none")


Normal = Callable[[tuple[int, ...]], Any]


def check_snr(snr_db: float) -> float:
    """Returns ``snr_db`` as float, or raises ``ValueError`` naming the valid range."""
    v = float(snr_db)
    if math.isnan(v) or not SNR_MIN_DB <= v <= SNR_MAX_DB:
        raise ValueError(
            f"SNR must be a number of dB in [{SNR_MIN_DB:g}, {SNR_MAX_DB:g}], got {snr_db}"
        )
    return v


def noise_std(power: Any, snr_db: Any) -> Any:
    """Standard deviation of *each* real component of complex noise with total variance P/SNR."""
    return (power / (10.0 ** (snr_db / 10.0)) / 2.0) ** 0.5


def mean_power(re: Any, im: Any) -> Any:
    """Mean squared magnitude over the last axis, shape (..., 1) for broadcasting."""
    return (re * re + im * im).mean(-1)[..., None]


def awgn(re: Any, im: Any, snr_db: Any, normal: Normal, power: Any = None) -> tuple[Any, Any]:
    """Adds complex Gaussian noise at ``snr_db`` (scalar, or one value per transmission).

    ``power`` overrides the measured mean squared magnitude where the arrays carry padding that
    was never transmitted (training with zero-filled truncated codes, where it is 1 by design).
    """
    std = noise_std(mean_power(re, im) if power is None else power, snr_db)
    return re + std * normal(tuple(re.shape)), im + std * normal(tuple(im.shape))


def rayleigh(
    re: Any, im: Any, snr_db: Any, normal: Normal, block_shape: tuple[int, ...], power: Any = None
) -> tuple[Any, Any]:
    """Block fading: one gain per block (``block_shape`` broadcastable to ``re``), then AWGN at
    ``snr_db`` relative to the *transmitted* power, then zero-forcing equalisation ``y / h``."""
    hr = normal(block_shape) * math.sqrt(0.5)
    hi = normal(block_shape) * math.sqrt(0.5)
    std = noise_std(mean_power(re, im) if power is None else power, snr_db)
    yr = hr * re - hi * im + std * normal(tuple(re.shape))
    yi = hr * im + hi * re + std * normal(tuple(im.shape))
    g = hr * hr + hi * hi  # |h|^2
    return (yr * hr + yi * hi) / g, (yi * hr - yr * hi) / g


def apply(
    kind: str,
    re: Any,
    im: Any,
    snr_db: Any,
    normal: Normal,
    block_shape: tuple[int, ...] | None = None,
    power: Any = None,
) -> tuple[Any, Any]:
    """Dispatches to the named channel; ``none`` is the noiseless identity. Rayleigh fades once
    per sample (first axis) unless ``block_shape`` says otherwise."""
    if kind == "awgn":
        return awgn(re, im, snr_db, normal, power)
    if kind == "rayleigh":
        block = block_shape or (re.shape[0],) + (1,) * (len(re.shape) - 1)
        return rayleigh(re, im, snr_db, normal, block, power)
    if kind == "none":
        return re, im
    raise ValueError(f"unknown channel {kind!r}; choose one of {CHANNELS}")


def digital_capacity_bits(channel_uses: float, snr_db: float) -> float:
    """Bits an ideal digital link carries in ``channel_uses`` complex symbols at ``snr_db``."""
    return channel_uses * math.log2(1.0 + 10.0 ** (check_snr(snr_db) / 10.0))
