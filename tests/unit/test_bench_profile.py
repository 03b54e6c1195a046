"""``semlink bench profile``'s settings are checked before anything is measured."""

import pytest

from semlink.bench.profile import ProfileBenchConfig


@pytest.mark.parametrize("seconds", [0.0, -1.0])
def test_the_idle_look_must_last(seconds):
    with pytest.raises(ValueError, match="--idle-seconds must be positive"):
        ProfileBenchConfig(idle_seconds=seconds)
    assert ProfileBenchConfig(idle_seconds=0.5).idle_seconds == 0.5
