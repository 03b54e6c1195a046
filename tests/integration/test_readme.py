"""The README's "Using it" block runs as written, top to bottom.

The block uses the default ports (8000, 8001, 8080, 9001, 9002), so it runs in a network
namespace of its own (``unshare --net``, a private loopback): nothing on the machine can clash
with it. HOME is a temporary folder, so the development certificates land there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_block(heading: str) -> str:
    """The first ```bash block under the README's ``## heading``."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, f"no bash block under '## {heading}'"
    return match.group(1)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("curl") is None,
    reason="needs root, unshare and curl for a private network namespace",
)
def test_using_it_runs_as_written(tmp_path):
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    script = tmp_path / "using-it.sh"
    # a fresh namespace's loopback starts down; bring it up, then the block exactly as written
    script.write_text("set -euo pipefail\nip link set lo up\n" + readme_block("Using it"))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "XDG_CONFIG_HOME")} | {
        "HOME": str(tmp_path)
    }
    proc = subprocess.run(
        ["unshare", "--net", "bash", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    labels = json.loads((tmp_path / "samples" / "digits-vit" / "labels.json").read_text())
    assert answer["exit"] == "server" and not answer["degraded"], answer
    assert answer["label"] == labels["0.png"] and answer["tokens_sent"] == 9
    assert (tmp_path / ".config" / "semlink" / "certs" / "ca.pem").is_file()
