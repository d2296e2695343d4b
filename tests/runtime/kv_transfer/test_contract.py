"""The contract: checked-in stubs match proto/kv_transfer.proto; proto/ holds sources only."""
from pathlib import Path

from runtime.kv_transfer import codegen

REPO = Path(__file__).resolve().parents[3]


def test_checked_in_stubs_are_fresh(tmp_path):
    fresh = codegen.generate(tmp_path)
    for path in fresh:
        checked_in = codegen.OUT / path.name
        assert checked_in.read_bytes() == path.read_bytes(), (
            f"{checked_in} is stale against {codegen.PROTO}: run `make proto`")


def test_proto_folder_holds_only_proto_sources():
    files = [p for p in (REPO / "proto").rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".proto" for p in files), files


def test_stubs_import_package_relative():
    from runtime.kv_transfer._proto import kv_transfer_pb2, kv_transfer_pb2_grpc

    assert kv_transfer_pb2_grpc.kv__transfer__pb2 is kv_transfer_pb2
    assert kv_transfer_pb2.DESCRIPTOR.package == "tandem.kv_transfer.v1"
