"""Regenerates the gRPC stubs from ``protocol/grpc_service.proto``: ``python -m semlink.protocol.generate``.

The stubs are committed (serving images need no protoc); ``tests/unit/test_protocol.py`` fails when
they are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = "semlink/protocol/grpc_service.proto"
OUTPUTS = ("grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py")


def generate(out_root: Path = ROOT) -> list[Path]:
    """Runs protoc (from grpcio-tools) with ``out_root`` as the output root. Returns the files."""
    from grpc_tools import protoc

    rc = protoc.main(
        [
            "protoc",
            f"-I{ROOT}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            str(ROOT / PROTO),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    return [out_root / "semlink" / "protocol" / name for name in OUTPUTS]


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT))
    sys.exit(0)
