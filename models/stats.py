"""Uncertainty of the figures semlink reports: every accuracy with its n and a 95 % interval."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Z95 = 1.96


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion ``p`` observed on ``n`` samples."""
    if n <= 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pm(p: float, n: int) -> str:
    """``p`` in percent with the half-width of its 95 % interval: ``96.3±2.1``."""
    lo, hi = wilson(p, n)
    return f"{100 * p:.1f}±{100 * (hi - lo) / 2:.1f}"


class Difference:
    """A paired difference of two accuracies on the same samples, in points, with its 95 %
    percentile-bootstrap interval (resampling the samples, both methods together)."""

    def __init__(self, diff: float, lo: float, hi: float, n: int) -> None:
        self.diff, self.lo, self.hi, self.n = diff, lo, hi, n

    @property
    def tie(self) -> bool:
        """Whether the interval holds 0: the two are not told apart on these samples."""
        return self.lo <= 0.0 <= self.hi

    def as_dict(self) -> dict[str, float | int | bool]:
        """The difference, its interval and n, JSON-ready (points)."""
        return {"diff": self.diff, "lo": self.lo, "hi": self.hi, "n": self.n, "tie": self.tie}

    def __str__(self) -> str:
        text = f"{self.diff:+.1f} points [{self.lo:+.1f}, {self.hi:+.1f}]"
        return text + (" (tie)" if self.tie else "")


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
) -> Difference:
    """``mean(a) - mean(b)`` in points for per-sample scores (1 right, 0 wrong) of two methods
    on the same samples, with the 95 % interval of 2,000 paired bootstrap resamples."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired scores need two equal 1-D arrays, got {a.shape} and {b.shape}")
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))
    boots = d[idx].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return Difference(100 * float(d.mean()), 100 * float(lo), 100 * float(hi), len(d))


def bounded_difference(a: float, b: float, n: int) -> Difference:
    """``a - b`` in points for two accuracies measured on the same ``n`` samples when only their
    means are known (no per-sample scores to pair), with a conservative 95 % interval:
    ``±1.96·(se_a + se_b)``, binomial standard errors. It holds whatever the two's correlation
    (``sd(X − Y) ≤ sd(X) + sd(Y)``), and for an average of accuracies each measured on the same
    ``n`` samples too (a mixture's standard error is at most the binomial one at its mean)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    se = sum((p * (1 - p) / n) ** 0.5 for p in (a, b))
    diff = 100 * (a - b)
    return Difference(diff, diff - 100 * Z95 * se, diff + 100 * Z95 * se, n)
