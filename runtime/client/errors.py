"""Typed errors of the client SDK, each carrying the gRPC status it came from."""

from __future__ import annotations

import grpc


class TandemError(Exception):
    """A call failed. `code` is the grpc.StatusCode, `details` the server's message,
    `retry_after_s` the seconds the server suggests waiting before a retry (its
    `retry-after` trailer; None when it sent none)."""

    def __init__(self, code: grpc.StatusCode, details: str, retry_after_s: int | None = None):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.retry_after_s = retry_after_s


class InvalidArgumentError(TandemError):
    """The request was refused as sent; `details` says what to fix."""


class UnauthenticatedError(TandemError):
    """Missing or wrong API key."""


class UnavailableError(TandemError):
    """The server or the cluster behind it cannot serve now (retried with backoff first)."""


class DeadlineExceededError(TandemError):
    """The call's deadline passed before it finished."""


class ResourceExhaustedError(TandemError):
    """The cluster has no room for the request right now (its queue is full, or it would
    miss its time-to-first-token target); `retry_after_s` says when to try again."""


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
    return _BY_CODE.get(code, TandemError)(code, details or "", _retry_after(err))


def _retry_after(err: grpc.RpcError) -> int | None:
    trailers = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) else ()
    for key, value in trailers or ():
        if key == "retry-after":
            try:
                return int(value)
            except ValueError:
                return None
    return None
