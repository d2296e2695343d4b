"""Retrying calls that fail with UNAVAILABLE: exponential backoff with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `max_attempts` tries of a call that fails UNAVAILABLE before any response
    arrived (a stream that already produced tokens is never replayed). Try n waits
    `initial_backoff_s * multiplier**(n-1)`, capped at `max_backoff_s`, times a jitter in
    [0.5, 1]."""

    max_attempts: int = 4
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0

    def backoff(self, attempt: int) -> float:
        base = min(self.initial_backoff_s * self.multiplier ** (attempt - 1), self.max_backoff_s)
        return base * random.uniform(0.5, 1.0)

    def should_retry(self, err: grpc.RpcError, attempt: int) -> bool:
        code = err.code() if callable(getattr(err, "code", None)) else None
        return code == grpc.StatusCode.UNAVAILABLE and attempt < self.max_attempts
