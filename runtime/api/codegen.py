"""Regenerate the public API stubs from proto/tandem.proto (`make proto` runs this).

The stubs in `runtime/api/_proto/` are generated, never edited by hand. protoc writes absolute
imports (`import tandem_pb2`); they are rewritten package-relative so the stubs import from
inside `runtime`. A test regenerates into a temporary folder and compares.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "proto" / "tandem.proto"
OUT = Path(__file__).resolve().parent / "_proto"
STUBS = ("tandem_pb2.py", "tandem_pb2.pyi", "tandem_pb2_grpc.py")


def generate(out_dir: Path = OUT) -> list[Path]:
    """Run grpcio-tools' protoc on the contract into `out_dir`; returns the stub paths."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{PROTO.parent}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", str(PROTO)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    grpc_stub = out_dir / "tandem_pb2_grpc.py"
    text = re.sub(r"^import tandem_pb2 as", "from . import tandem_pb2 as",
                  grpc_stub.read_text(), flags=re.M)
    grpc_stub.write_text(text)
    return [out_dir / name for name in STUBS]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(path)
