"""The public API contract (proto/tandem.proto): generated stubs in `_proto`, `make proto`."""
