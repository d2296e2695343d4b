"""Regenerate the gRPC stubs from proto/*.proto (`make proto` runs this).

Each contract's stubs live in a `_proto/` package beside the code that uses it and are
generated, never edited by hand. protoc writes absolute imports (`import tandem_pb2`); they are
rewritten package-relative so the stubs import from inside `runtime`. A test regenerates every
contract into a temporary folder and compares.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTO_DIR = REPO / "proto"
# contract name (proto/NAME.proto) -> folder of its checked-in stubs
CONTRACTS = {
    "kv_transfer": REPO / "runtime" / "kv_transfer" / "_proto",
    "tandem": REPO / "runtime" / "api" / "_proto",
}


def generate(name: str, out_dir: Path | None = None) -> list[Path]:
    """Run grpcio-tools' protoc on proto/NAME.proto into `out_dir` (default: the checked-in
    stubs folder); returns the stub paths."""
    from grpc_tools import protoc

    out_dir = out_dir or CONTRACTS[name]
    proto = PROTO_DIR / f"{name}.proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(proto),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {proto}")
    grpc_stub = out_dir / f"{name}_pb2_grpc.py"
    text = re.sub(
        rf"^import {name}_pb2 as", f"from . import {name}_pb2 as", grpc_stub.read_text(), flags=re.M
    )
    grpc_stub.write_text(text)
    return [out_dir / f"{name}{suffix}" for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]


if __name__ == "__main__":
    for contract in sys.argv[1:] or CONTRACTS:
        for path in generate(contract):
            print(path)
