"""What the engine hands back: per-step request outputs and KV handoff handles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from runtime.engine.sampling_params import SamplingParams


class TokenLogprob(NamedTuple):
    """A token's raw-logit logprob and the most likely (token id, logprob) pairs at its
    position, highest first (as many as the request asked for)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class KVHandle:
    """A prefilled request whose KV the prefill engine holds until `release`.

    The KV covers `num_kv_tokens` = the prompt; `output_token_ids` holds the first sampled
    token, whose KV the decode side computes in its first step.
    """

    request_id: str
    prompt_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]
    params: SamplingParams
    num_kv_tokens: int
    logprobs: tuple = ()
    top_logprobs: tuple = ()


@dataclass
class RequestTimings:
    """Monotonic timestamps (seconds) of a request's milestones, None until reached."""

    arrival: float
    first_scheduled: float | None = None
    first_token: float | None = None
    finished: float | None = None


@dataclass
class RequestOutput:
    """A request's state after a step: everything so far plus this step's delta."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    new_token_ids: list[int] = field(default_factory=list)
    delta_text: str = ""
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    logprobs: list[float | None] | None = None
    top_logprobs: list[list[tuple[int, float]] | None] | None = None
    # With params.prompt_logprobs, once the prompt is computed (not on a decode engine): one
    # entry per prompt token, None for the first (nothing predicts it).
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None
    num_cached_tokens: int = 0
    kv_handle: KVHandle | None = None  # prefill role: set once the KV is ready to export
    timings: RequestTimings | None = None
    # One per token in `new_token_ids`: seconds since the request's previous token was
    # sampled on this engine (its inter-token latency), None for a token with no predecessor
    # here (the first token, or the first after a KV import or a resume elsewhere).
    token_gaps_s: tuple[float | None, ...] = ()


@dataclass(frozen=True)
class StepStats:
    """What one engine step did: prompt tokens computed, sequences that advanced a decode
    token, and the seconds its forward pass took."""

    num_prompt_tokens: int = 0
    num_decode_seqs: int = 0
    seconds: float = 0.0


def new_token_logprobs(out: RequestOutput) -> tuple[TokenLogprob, ...] | None:
    """Logprobs of `out.new_token_ids`, None when the request asked for none."""
    if out.logprobs is None or out.top_logprobs is None:
        return None
    k = len(out.new_token_ids)
    first = len(out.token_ids) - k
    return tuple(
        TokenLogprob(t, out.logprobs[first + j] or 0.0, tuple(out.top_logprobs[first + j] or ()))
        for j, t in enumerate(out.new_token_ids)
    )


def prompt_token_logprobs(out: RequestOutput) -> tuple[TokenLogprob | None, ...] | None:
    """Logprobs of the prompt tokens (None for the first), None when not asked for or not
    computed here."""
    if out.prompt_logprobs is None or out.prompt_top_logprobs is None:
        return None
    return (None,) + tuple(
        TokenLogprob(t, out.prompt_logprobs[j] or 0.0, tuple(out.prompt_top_logprobs[j] or ()))
        for j, t in enumerate(out.prompt_token_ids)
        if j
    )
