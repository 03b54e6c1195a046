"""The README's hardening section ("Security and failures") states each limit as the code
enforces it: every figure below is computed from the code's own constants and defaults, so a
limit changed in one place and not the other fails here (issue: hardening, second round, where
the README said 64 MB and the error 67 MB)."""

from __future__ import annotations

from pathlib import Path

import pytest

from semlink.device.channel_state import MAX_STATE_BYTES, STATE_TIMEOUT_S
from semlink.device.settings import DeviceSettings
from semlink.link.traces import MAX_TRACE_BYTES
from semlink.protocol import params as P
from semlink.protocol.codec import MAX_ELEMENTS
from semlink.runtime.pipelines.base import MAX_BATCH
from semlink.runtime.security import load_api_keys
from semlink.server.settings import ServerSettings

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = " ".join(  # the section's words, however its lines are wrapped
    README.read_text().split("## Security and failures\n", 1)[1].split("\n## ", 1)[0].split()
)
DEVICE, SERVER = DeviceSettings(), ServerSettings()
IMAGES = DEVICE.image_limits()


def mib(n: int) -> str:
    return f"{n // 2**20} MiB = {n:,} bytes"


STATED = {
    "device body": f"device {mib(DEVICE.max_body_bytes)}",
    "server body": f"server `max_message_bytes` {SERVER.max_message_bytes // 2**20} MiB = "
    f"{SERVER.max_message_bytes:,}",
    "pixels": f"fewer than {IMAGES.pixels:,} ({int(IMAGES.pixels**0.5)}²: an image of "
    f"{int(IMAGES.pixels**0.5)} × {int(IMAGES.pixels**0.5)} is refused)",
    "sides": f"each shorter than {IMAGES.side:,} pixels",
    "aspect": f"the long side less than {IMAGES.aspect:g} times the short one",
    "batch": f"batch 1 to {MAX_BATCH}",
    "elements": f"at most {MAX_ELEMENTS:,} elements in a dimension and in all",
    "request id": f"a string of at most {P.MAX_REQUEST_ID} characters, echoed whole",
    "in flight": f"device {DEVICE.max_concurrent_per_client}, server "
    f"{SERVER.max_concurrent_per_client}",
    "headers": f"within {DEVICE.http_header_timeout_s:g} s",
    "queue": f"at most {SERVER.max_queue:,}; a single request of more samples than that",
    "link state": f"at most {MAX_STATE_BYTES:,} bytes ({MAX_STATE_BYTES // 1024} KiB), streamed, "
    f"uncompressed, whole within {STATE_TIMEOUT_S:g} s",
    "traces": f"at most {MAX_TRACE_BYTES:,} bytes ({MAX_TRACE_BYTES // 2**20} MiB)",
    "keys": "at least 16 characters, all printable ASCII, none whitespace",
}


@pytest.mark.parametrize("what", sorted(STATED))
def test_the_readme_states_each_limit_as_the_code_has_it(what):
    assert STATED[what] in SECTION, f"README's 'Security and failures' lacks: {STATED[what]}"


@pytest.mark.parametrize("name", sorted(P.RANGES))
def test_the_readme_states_each_parameter_range_as_checked(name):
    stated = str(P.RANGES[name]).replace("-", "\u2212")
    assert f"`{name}`" in SECTION and stated in SECTION, (name, stated)


def test_the_key_length_stated_is_the_one_refused(tmp_path):
    assert load_api_keys("k" * 16, None) == ["k" * 16]
    with pytest.raises(ValueError, match="shorter than 16"):
        load_api_keys("k" * 15, None)
