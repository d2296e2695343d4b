"""Tandem's client SDK over its gRPC API: `Client` (blocking) and `AsyncClient` (asyncio).

from runtime.client import Client
with Client("127.0.0.1:50051") as client:
    for chunk in client.stream(messages=[{"role": "user", "content": "Hi"}], max_tokens=32):
        print(chunk.text, end="", flush=True)
"""

from runtime.client._retry import RetryPolicy
from runtime.client.aio import AsyncClient
from runtime.client.client import Client
from runtime.client.errors import (
    CancelledError,
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
    TandemError,
    UnauthenticatedError,
    UnavailableError,
)
from runtime.client.results import (
    Completion,
    StreamChunk,
    Timings,
    Tokenized,
    TokenLogprob,
    ToolCall,
    Usage,
    Version,
)

__all__ = [
    "AsyncClient",
    "CancelledError",
    "Client",
    "Completion",
    "DeadlineExceededError",
    "InvalidArgumentError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "StreamChunk",
    "TandemError",
    "Timings",
    "TokenLogprob",
    "Tokenized",
    "ToolCall",
    "UnauthenticatedError",
    "UnavailableError",
    "Usage",
    "Version",
]
