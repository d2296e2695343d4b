"""Generated gRPC/protobuf stubs of proto/tandem.proto (`make proto`; never hand-edited)."""
