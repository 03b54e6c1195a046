"""Process settings refuse bad values at startup, naming what is allowed."""

import pytest
from pydantic import ValidationError

from semlink.device.settings import DeviceSettings
from semlink.server.settings import ServerSettings


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("token_format", "bf16", "'fp16', 'int8' or 'fp32'"),
        ("channel", "bsc", "'awgn', 'rayleigh' or 'none'"),
        ("controller", "dqn", "'growth' or 'local'"),
        ("server", "nohostport", "HOST:PORT"),
        ("budget", 1.5, "less than or equal to 1"),
    ],
)
def test_device_settings_refuse_bad_values(field, value, fragment):
    with pytest.raises(ValidationError, match=fragment):
        DeviceSettings(**{field: value})


def test_settings_read_the_environment(monkeypatch):
    monkeypatch.setenv("SEMLINK_DEVICE_BUDGET", "0.5")
    monkeypatch.setenv("SEMLINK_SERVER_MAX_BATCH_SIZE", "4")
    assert DeviceSettings().budget == 0.5 and ServerSettings().max_batch_size == 4
