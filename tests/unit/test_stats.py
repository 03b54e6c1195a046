"""The 95 % interval every reported accuracy carries."""

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
