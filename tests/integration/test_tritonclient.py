"""semlink lives beside the OIP ecosystem: the server runs on the oldest protobuf it declares,
and a current tritonclient (which pins protobuf below 7) installs into the same environment as
semlink and infers against it, unmodified.

Packages come from the registry into temporary folders (nothing is installed on the machine), so
the test runs in CI (CI=true) or with SEMLINK_SYSTEM_TESTS=1, and skips elsewhere.
"""

from __future__ import annotations

import site
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from semlink.procs import reserve_port
from tests.conftest import may_change_machine, system_skip_reason

OLDEST_PROTOBUF = "5.26.1"  # pyproject.toml: protobuf>=5.26.1
# tritonclient declares protobuf>=6.30 but its own stubs need 6.33.5: the oldest it runs on
TRITON = ["tritonclient[grpc]==2.73.0", "protobuf==6.33.5"]

pytestmark = pytest.mark.slow


def _env(tmp: Path, name: str, wheel: Path, packages: list[str]) -> Path:
    """A Python environment with ``packages`` and semlink's wheel of its own; everything else
    comes from this one (a .pth after its own folder, so its own versions win)."""
    env = tmp / name
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    purelib = next(env.glob("lib/python*/site-packages"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", "install"]
    for argv in ([*packages, "--no-deps"], [str(wheel), "--no-deps"]):
        done = subprocess.run(
            [*pip, "--target", str(purelib), "--upgrade", *argv],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            pytest.fail(f"pip install {argv}: {done.stderr[-2000:]}")
    (purelib / "zz-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return env / "bin" / "python"


@pytest.mark.skipif(not may_change_machine(), reason=system_skip_reason("packages from PyPI"))
def test_tritonclient_infers_against_a_server_on_the_oldest_protobuf(tmp_path, wheel):
    old = _env(tmp_path, "oldest", wheel, [f"protobuf=={OLDEST_PROTOBUF}"])
    triton = _env(tmp_path, "triton", wheel, [*TRITON, "python-rapidjson"])

    version = "import google.protobuf as p; print(p.__version__)"
    # every child runs outside the checkout: its semlink/ folder would shadow the installed wheel
    outside = {"cwd": tmp_path, "text": True}
    assert subprocess.check_output([str(old), "-c", version], **outside).strip() == OLDEST_PROTOBUF
    # semlink and tritonclient in one environment: both import
    both = "import semlink.server.main, semlink.device.main, tritonclient.grpc; " + version
    assert subprocess.check_output([str(triton), "-c", both], **outside).strip() == "6.33.5"

    grpc_port, http_port = reserve_port(), reserve_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [str(old), "-m", "semlink.cli", "server", "--insecure"]
        + ["--grpc-port", str(grpc_port), "--http-port", str(http_port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp_path,
    )
    try:
        from semlink.runtime.pipelines import make_pipeline
        from semlink.runtime.repository import DEFAULT_REPOSITORY, resolve, scan

        pipe = make_pipeline(resolve(scan(DEFAULT_REPOSITORY), "digits-vit"))
        pipe.open(pipe.device_graphs())
        image = np.random.default_rng(0).normal(size=(1, 1, 48, 48)).astype(np.float32)
        budget = next(o for o in pipe.options() if o.name == "s2:a0.25")  # the split, a quarter
        tokens = pipe.run_stretch(0, image, None, budget).outputs["tokens"].astype(np.float16)
        expected = pipe.run_batch("tail", [{"tokens": tokens[0].astype(np.float32)}])
        np.save(tmp_path / "tokens.npy", tokens)
        client = textwrap.dedent(
            f"""
            import time, numpy as np, tritonclient.grpc as tc
            c = tc.InferenceServerClient("127.0.0.1:{grpc_port}")
            for _ in range(300):
                try:
                    if c.is_server_ready():
                        break
                except Exception:
                    pass
                time.sleep(0.2)
            tokens = np.load("{tmp_path / "tokens.npy"}")
            inp = tc.InferInput("tokens", list(tokens.shape), "FP16")
            inp.set_data_from_numpy(tokens)
            out = c.infer("digits-vit", [inp], outputs=[tc.InferRequestedOutput("logits")],
                          parameters={{"budget": 0.25}})
            np.save("{tmp_path / "logits.npy"}", out.as_numpy("logits"))
            # the streaming extension: tritonclient's start_stream / async_stream_infer
            import queue
            answers = queue.Queue()
            c.start_stream(callback=lambda result, error: answers.put((result, error)))
            c.async_stream_infer("digits-vit", [inp], request_id="stream-1",
                                 outputs=[tc.InferRequestedOutput("logits")])
            result, error = answers.get(timeout=30)
            assert error is None, error
            assert result.get_response().id == "stream-1"
            np.save("{tmp_path / "stream.npy"}", result.as_numpy("logits"))
            c.stop_stream()
            print(c.get_model_metadata("digits-vit").inputs[0].name)
            """
        )
        done = subprocess.run(
            [str(triton), "-c", client], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert done.returncode == 0, (
            done.stderr[-3000:] + (tmp_path / "server.log").read_text()[-2000:]
        )
        assert done.stdout.strip() == "tokens"
        np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, atol=2e-2)
        np.testing.assert_allclose(np.load(tmp_path / "stream.npy"), expected, atol=2e-2)
    finally:
        server.terminate()
        server.wait(timeout=30)
