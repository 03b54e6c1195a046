"""Regenerates the gRPC stubs from ``protocol/grpc_service.proto``: ``python -m semlink.protocol.generate``.

The stubs are committed (serving images need no protoc); ``tests/unit/test_protocol.py`` fails when
they are stale.

protoc stamps its own versions into the stubs and refuses to load them under anything older (or,
for protobuf, under another major version). The stubs use only APIs that protobuf 5.26 through
7.x and grpcio 1.63 and later all have, so :func:`widen` takes those two checks out: semlink then
installs beside packages that pin protobuf below 7 (tritonclient, for one), as pyproject.toml
declares and ``tests/integration/test_tritonclient.py`` checks with the oldest protobuf there.
It also gives the messages a descriptor pool of their own, so semlink's stubs and another OIP
client's (which define the same ``inference.*`` messages) load in one process.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = "semlink/protocol/grpc_service.proto"  # as the package names it: the stubs' imports
OUTPUTS = ("grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py")


def generate(out_dir: Path = ROOT / "protocol") -> list[Path]:
    """Runs protoc (from grpcio-tools) on ``protocol/grpc_service.proto``, seen as
    ``semlink/protocol/grpc_service.proto`` (the package that folder installs as), and writes the
    stubs into ``out_dir``. Returns the files."""
    import tempfile

    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(
            [
                "protoc",
                f"-Isemlink/protocol={ROOT / 'protocol'}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                PROTO,
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / name for name in OUTPUTS]
        for path in paths:
            generated = Path(tmp, "semlink", "protocol", path.name).read_text()
            path.write_text(widen(generated))
    return paths


_PROTOBUF_CHECK = re.compile(
    r"from google\.protobuf import runtime_version as _runtime_version\n"
    r"|_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)\n"
)
_GRPC_CHECK = re.compile(r"GRPC_GENERATED_VERSION = .*?\n    \)\n", re.S)


def widen(code: str) -> str:
    """Generated code without protoc's exact-version checks, its messages in a descriptor pool
    of their own (see the module docstring)."""
    code = _PROTOBUF_CHECK.sub("", code)
    # tritonclient (and any OIP client) registers the same `inference.*` messages in protobuf's
    # default pool; a pool of our own lets both load in one process. The wire is unchanged.
    code = code.replace(
        "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(",
        "# a pool of semlink's own: other OIP stubs (tritonclient) define the same messages\n"
        "DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile(",
    )
    return _GRPC_CHECK.sub(
        "# version check removed by semlink.protocol.generate: grpcio>=1.63 runs these stubs\n",
        code,
    )


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT))
    sys.exit(0)
