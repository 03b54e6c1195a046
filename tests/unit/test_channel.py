"""Channels: the empirical SNR of the output matches the requested SNR within 0.2 dB."""

import math

import numpy as np
import pytest
import torch

from semlink.runtime import channel

N = 100_000


def _empirical_snr_db(x_re, x_im, y_re, y_im):
    p = np.mean(x_re**2 + x_im**2)
    n = np.mean((y_re - x_re) ** 2 + (y_im - x_im) ** 2)
    return 10 * math.log10(p / n)


@pytest.mark.parametrize("snr_db", [-10.0, 0.0, 10.0, 25.0])
def test_awgn_numpy_and_torch_hit_the_snr(snr_db):
    rng = np.random.default_rng(0)
    re, im = rng.normal(size=(1, N)) * 1.7, rng.normal(size=(1, N)) * 1.7  # power 2 * 1.7^2, not 1
    y = channel.awgn(re, im, snr_db, lambda s: rng.normal(size=s))
    assert _empirical_snr_db(re, im, *y) == pytest.approx(snr_db, abs=0.2)
    g = torch.Generator().manual_seed(0)
    tr, ti = torch.from_numpy(re), torch.from_numpy(im)
    yt = channel.awgn(tr, ti, snr_db, lambda s: torch.randn(s, generator=g, dtype=torch.float64))
    assert _empirical_snr_db(re, im, yt[0].numpy(), yt[1].numpy()) == pytest.approx(snr_db, abs=0.2)


def test_power_is_mean_squared_magnitude_not_mean_magnitude():
    re, im = np.full((1, 4), 3.0), np.zeros((1, 4))
    assert channel.mean_power(re, im).item() == 9.0


def test_rayleigh_equalised_noise_depends_on_the_fade():
    rng = np.random.default_rng(1)
    re, im = rng.normal(size=(2000, 64)) / math.sqrt(2), rng.normal(size=(2000, 64)) / math.sqrt(2)
    yr, yi = channel.rayleigh(re, im, 10.0, lambda s: rng.normal(size=s), (2000, 1))
    err = ((yr - re) ** 2 + (yi - im) ** 2).mean(1)
    # one gain per block: errors differ strongly across blocks (deep fades), yet median SNR is near 10 dB
    assert err.max() / np.median(err) > 50
    assert 10 * math.log10(1.0 / np.median(err)) == pytest.approx(
        10.0 + 10 * math.log10(math.log(2)), abs=1.0
    )


def test_noiseless_and_bad_snr():
    re = np.ones((1, 3))
    assert channel.apply("none", re, re, 0.0, None)[0] is re
    for bad in (float("nan"), -51.0, 101.0):
        with pytest.raises(ValueError, match=r"\[-50, 100\]"):
            channel.check_snr(bad)
    with pytest.raises(ValueError, match="unknown channel"):
        channel.apply("bsc", re, re, 0.0, None)


def test_digital_capacity():
    assert channel.digital_capacity_bits(100, 0.0) == pytest.approx(100.0)
    assert channel.digital_capacity_bits(10, 30.0) == pytest.approx(10 * math.log2(1001))
