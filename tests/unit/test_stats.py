"""The 95 % interval every reported accuracy carries."""

import numpy as np
import pytest

from semlink.models.stats import pm, wilson


def test_wilson_matches_the_textbook_values():
    lo, hi = wilson(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson(1.0, 269)[1] == pytest.approx(1.0) and wilson(1.0, 269)[0] == pytest.approx(
        0.986, abs=1e-3
    )
    assert wilson(0.3, 0) == (0.0, 1.0)


def test_pm_prints_the_half_width():
    assert pm(0.967, 269) == "96.7±2.2"


def test_paired_bootstrap_separates_a_real_gap_and_calls_a_small_one_a_tie():
    import numpy as np

    from semlink.models.stats import paired_bootstrap

    rng = np.random.default_rng(1)
    truth = rng.random(2000) < 0.9
    worse = truth & (rng.random(2000) > 0.1)  # loses about 9 points, on the same samples
    gap = paired_bootstrap(truth, worse)
    assert 7 < gap.diff < 11 and gap.lo > 0 and not gap.tie
    flip = truth.copy()
    flip[:3] = ~flip[:3]  # three samples differ: no difference to speak of
    same = paired_bootstrap(truth, flip)
    assert same.tie and abs(same.diff) < 0.2
    assert "(tie)" in str(same) and "points [" in str(gap)
    with pytest.raises(ValueError, match="equal 1-D"):
        paired_bootstrap([1, 0], [1])


def test_bounded_difference_covers_the_paired_interval():
    """Without per-sample scores the conservative interval is at least as wide as the paired
    one on the same samples, and calls a small gap a tie."""
    from semlink.models.stats import bounded_difference, paired_bootstrap

    rng = np.random.default_rng(0)
    a = (rng.random(2000) < 0.90).astype(float)
    b = np.where(rng.random(2000) < 0.9, a, 1 - a)  # correlated with a
    paired = paired_bootstrap(a, b)
    bound = bounded_difference(a.mean(), b.mean(), len(a))
    assert bound.diff == pytest.approx(paired.diff)
    assert bound.lo <= paired.lo and bound.hi >= paired.hi
    assert bounded_difference(0.92, 0.91, 2000).tie
    assert not bounded_difference(0.95, 0.80, 2000).tie
    with pytest.raises(ValueError):
        bounded_difference(0.9, 0.8, 0)
