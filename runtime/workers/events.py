"""What a worker streams back to the frontend for one request (small, picklable records)."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.engine import RequestOutput, TokenLogprob
from runtime.engine.outputs import new_token_logprobs, prompt_token_logprobs


@dataclass(frozen=True)
class TokenEvent:
    """New tokens of one request. Durations are measured on the worker that ran them:
    `queue_s`/`prefill_s` once the first token exists (prefill or colocated worker),
    `decode_s` on the last event (decode or colocated worker). `token_gaps_s`: per new
    token, seconds since the request's previous token on this worker's engine (None: it has
    no predecessor there), measured on the engine so a batch of events read at once keeps
    its real spacing.
    `logprobs`: one per new token when the request asked for them; `prompt_logprobs` (None
    for the first prompt token) on the event that carries the first output token, when asked
    for."""

    request_id: str
    new_token_ids: tuple[int, ...]
    delta_text: str
    finished: bool = False
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    queue_s: float | None = None
    prefill_s: float | None = None
    decode_s: float | None = None
    token_gaps_s: tuple[float | None, ...] = ()
    logprobs: tuple[TokenLogprob, ...] | None = None
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None

    @classmethod
    def from_output(cls, out: RequestOutput, first_token_here: bool) -> "TokenEvent":
        t = out.timings
        queue_s = prefill_s = decode_s = None
        first = len(out.new_token_ids) == len(out.token_ids)  # this event carries token 0
        if t is not None and first_token_here and first and t.first_token and t.first_scheduled:
            queue_s = t.first_scheduled - t.arrival
            prefill_s = t.first_token - t.first_scheduled
        if t is not None and out.finished and t.finished:
            start = t.first_token if first_token_here else t.arrival
            decode_s = t.finished - (start or t.arrival)
        return cls(
            out.request_id,
            tuple(out.new_token_ids),
            out.delta_text,
            out.finished,
            out.finish_reason,
            len(out.prompt_token_ids),
            out.num_cached_tokens,
            queue_s,
            prefill_s,
            decode_s,
            out.token_gaps_s,
            new_token_logprobs(out),
            prompt_token_logprobs(out) if first and out.new_token_ids else None,
        )

    @classmethod
    def aborted(cls, request_id: str) -> "TokenEvent":
        return cls(request_id, (), "", finished=True, finish_reason="abort")


@dataclass(frozen=True)
class HandoffEvent:
    """The prefill worker's last event: how the request's KV handoff ended.

    `ok` with `finished_on_prefill`: the request ended with its first token, nothing moved.
    Not `ok`: `code` is the gRPC status name (UNAVAILABLE, RESOURCE_EXHAUSTED, CANCELLED...);
    both sides have freed the request's blocks.
    """

    request_id: str
    ok: bool
    seconds: float = 0.0
    num_bytes: int = 0
    finished_on_prefill: bool = False
    code: str | None = None
    message: str = ""
    encoding: str = ""  # the KV's wire encoding ("raw", "int8", "fp8") when it moved
