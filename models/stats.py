"""Uncertainty of the figures semlink reports: every accuracy with its n and a 95 % interval."""

from __future__ import annotations

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
