"""Typed errors of the client SDK, each carrying the gRPC status it came from."""

from __future__ import annotations

import grpc


class TandemError(Exception):
    """A call failed. `code` is the grpc.StatusCode, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidArgumentError(TandemError):
    """The request was refused as sent; `details` says what to fix."""


class UnauthenticatedError(TandemError):
    """Missing or wrong API key."""


class UnavailableError(TandemError):
    """The server or the cluster behind it cannot serve now (retried with backoff first)."""


class DeadlineExceededError(TandemError):
    """The call's deadline passed before it finished."""


class ResourceExhaustedError(TandemError):
    """The cluster has no room for the request right now."""


class CancelledError(TandemError):
    """The call was cancelled."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.CANCELLED: CancelledError,
}


def error_from_rpc(err: grpc.RpcError) -> TandemError:
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    code = code or grpc.StatusCode.UNKNOWN
    return _BY_CODE.get(code, TandemError)(code, details or "")
