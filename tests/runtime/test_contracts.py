"""The .proto contracts: checked-in stubs are fresh; proto/ holds sources only."""

import pytest

from runtime import codegen


@pytest.mark.parametrize("name", sorted(codegen.CONTRACTS))
def test_checked_in_stubs_are_fresh(tmp_path, name):
    for path in codegen.generate(name, tmp_path):
        checked_in = codegen.CONTRACTS[name] / path.name
        assert checked_in.read_bytes() == path.read_bytes(), (
            f"{checked_in} is stale against proto/{name}.proto: run `make proto`"
        )


def test_proto_folder_holds_only_proto_sources():
    files = [p for p in codegen.PROTO_DIR.rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".proto" for p in files), files


def test_stubs_import_package_relative():
    from runtime.api._proto import tandem_pb2, tandem_pb2_grpc
    from runtime.kv_transfer._proto import kv_transfer_pb2, kv_transfer_pb2_grpc

    assert tandem_pb2_grpc.tandem__pb2 is tandem_pb2
    assert tandem_pb2.DESCRIPTOR.package == "tandem.v1"
    assert kv_transfer_pb2_grpc.kv__transfer__pb2 is kv_transfer_pb2
    assert kv_transfer_pb2.DESCRIPTOR.package == "tandem.kv_transfer.v1"
