"""Regenerate the committed gRPC stubs from the .proto: `python -m alae_rt.serve.codegen` (needs grpcio-tools)."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE / "protos"
PROTO = "alae_rt/v1/alae_rt.proto"
STUBS = ("alae_rt_pb2.py", "alae_rt_pb2.pyi", "alae_rt_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    """Write the stubs for PROTO into `out` (flat, importable as alae_rt.serve.*); returns their paths."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                          f"--grpc_python_out={tmp}", str(PROTO_ROOT / PROTO)])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {PROTO} (exit status {rc})")
        written = []
        for name in STUBS:
            text = (Path(tmp) / Path(PROTO).parent / name).read_text()
            # protoc names the message module by its proto path (alae_rt.v1); the stubs live in alae_rt.serve.
            text = re.sub(r"^from alae_rt\.v1 import alae_rt_pb2 as", "from alae_rt.serve import alae_rt_pb2 as", text,
                          flags=re.MULTILINE)
            path = out / name
            path.write_text(text)
            written.append(path)
    return written


def main() -> int:
    for path in generate(HERE):
        print(f"wrote {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
