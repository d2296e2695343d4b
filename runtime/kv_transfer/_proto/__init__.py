"""Generated gRPC/protobuf stubs of proto/kv_transfer.proto (`make proto`; never hand-edited)."""
