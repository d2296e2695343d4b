"""The one error type of the KV handoff: a gRPC status code and a message saying what failed."""

from __future__ import annotations

import grpc


class KVTransferError(RuntimeError):
    """A handoff failed; `code` is the gRPC status (DATA_LOSS, DEADLINE_EXCEEDED, ...).

    When the sender reports one, both sides have freed everything they held for the request.
    """

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str | None = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError, request_id: str | None = None) -> "KVTransferError":
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", request_id)
