"""The public API contract: checked-in stubs match proto/tandem.proto."""
from runtime.api import codegen


def test_checked_in_stubs_are_fresh(tmp_path):
    for path in codegen.generate(tmp_path):
        checked_in = codegen.OUT / path.name
        assert checked_in.read_bytes() == path.read_bytes(), (
            f"{checked_in} is stale against {codegen.PROTO}: run `make proto`")


def test_stubs_import_package_relative():
    from runtime.api._proto import tandem_pb2, tandem_pb2_grpc

    assert tandem_pb2_grpc.tandem__pb2 is tandem_pb2
    assert tandem_pb2.DESCRIPTOR.package == "tandem.v1"
