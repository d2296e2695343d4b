"""What the dispatcher streams to the API layers (gRPC and HTTP turn these into their wire)."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.engine import TokenLogprob


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0


@dataclass
class Timings:
    """Seconds per stage (see proto/tandem.proto `Timings`)."""

    queue_s: float = 0.0
    prefill_s: float = 0.0
    kv_transfer_s: float = 0.0
    decode_s: float = 0.0
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    kv_transfer_bytes: int = 0
    prefill_worker: str = ""
    decode_worker: str = ""


@dataclass
class GenerationChunk:
    """New tokens of one request; the last chunk has `finish_reason`, `usage` and `timings`.

    `logprobs`: one per token of `token_ids`, when asked for. `prompt_logprobs`: one per prompt
    token (None for the first), on the chunk with the first output token, when asked for.
    `index`: which of the request's choices (n > 1) the chunk belongs to."""

    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    index: int = 0


class ServingError(RuntimeError):
    """A request failed inside the cluster; `code` is a gRPC status name (UNAVAILABLE, ...).
    `message` is for the client: it names no internal ids, processes or addresses.
    `retry_after_s`: when the client may usefully retry (gRPC `retry-after` trailer, HTTP
    `Retry-After` header)."""

    def __init__(self, code: str, message: str, retry_after_s: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
