"""Admission control: refuse at once a request that cannot meet its time-to-first-token
target or that would overfill a bounded queue, instead of queueing it to fail late."""

from __future__ import annotations

import math
from collections import deque


class Overloaded(RuntimeError):
    """The request is refused for load. `kind`: "ttft" (predicted to miss its TTFT target),
    "tpot" (its tokens are predicted to come slower than the TPOT target) or "queue" (the
    queue is full); `reason` says why, for the client; `retry_after_s` is
    when the queue ahead is predicted to have drained enough."""

    def __init__(self, kind: str, reason: str, retry_after_s: int):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.retry_after_s = retry_after_s


def predicted_wait_s(queued_tokens: int, num_prompt_tokens: int, tokens_per_s: float) -> float:
    """Seconds until a request of `num_prompt_tokens` has its prompt computed behind
    `queued_tokens` on a worker computing `tokens_per_s` (0: not measured yet, so 0)."""
    if tokens_per_s <= 0:
        return 0.0
    return (queued_tokens + num_prompt_tokens) / tokens_per_s


class TTFTMargin:
    """How much later than predicted first tokens have come lately: the `quantile` of
    (observed - predicted) TTFT over the last `max_samples` admitted requests, never
    negative, and 0 until `min_samples` are in.

    The prediction counts prompt tokens over a measured rate; what it leaves out (the
    frontend's and the workers' per-request overheads, a rate that drifts with the batch
    mix, the first token's trip back) only shows in what clients observe, so admission
    learns it from them. Not thread-safe: the router's lock guards it."""

    def __init__(self, quantile: float, min_samples: int = 10, max_samples: int = 100):
        self.quantile = quantile
        self.min_samples = min_samples
        self._errors: deque[float] = deque(maxlen=max_samples)

    def __len__(self) -> int:
        return len(self._errors)

    def observe(self, predicted_s: float, observed_s: float) -> None:
        self._errors.append(observed_s - predicted_s)

    @property
    def margin_s(self) -> float:
        if len(self._errors) < self.min_samples:
            return 0.0
        ordered = sorted(self._errors)
        return max(ordered[min(int(self.quantile * len(ordered)), len(ordered) - 1)], 0.0)


def check_admission(
    queued_tokens: int,
    num_prompt_tokens: int,
    tokens_per_s: float,
    ttft_budget_s: float | None,
    max_queued_tokens: int,
    margin_s: float = 0.0,
) -> None:
    """Raise `Overloaded` unless a request of `num_prompt_tokens` may join a worker that has
    `queued_tokens` ahead and computes `tokens_per_s`: its predicted wait, plus `margin_s`
    when anything is queued ahead, must fit `ttft_budget_s` (None: any), and the queue must
    stay within `max_queued_tokens` (0: no bound; an empty queue takes any prompt). Without
    a measured rate (`tokens_per_s` 0) only the queue bound applies. An idle worker is
    judged on its own prompt alone, so a large margin can never refuse everything: requests
    keep being served, and observed, while it is relearned."""
    over = queued_tokens + num_prompt_tokens - max_queued_tokens
    if max_queued_tokens and queued_tokens and over > 0:
        raise Overloaded(
            "queue",
            f"the prefill queue is full ({queued_tokens} prompt tokens queued, at most "
            f"{max_queued_tokens}); retry later",
            _retry_after(over, tokens_per_s),
        )
    if ttft_budget_s is None:
        return
    margin_s = margin_s if queued_tokens and tokens_per_s > 0 else 0.0
    wait = predicted_wait_s(queued_tokens, num_prompt_tokens, tokens_per_s) + margin_s
    if wait > ttft_budget_s:
        # What must drain first for the request to fit, margin included.
        late = queued_tokens + num_prompt_tokens - (ttft_budget_s - margin_s) * tokens_per_s
        if margin_s:  # an idle worker takes it without the margin
            late = min(late, queued_tokens)
        raise Overloaded(
            "ttft",
            f"the server is at capacity: the first token is predicted in {wait:.1f} s, past "
            f"the {ttft_budget_s:.1f} s this request may wait; retry later",
            _retry_after(late, tokens_per_s),
        )


def _retry_after(excess_tokens: float, tokens_per_s: float) -> int:
    """Whole seconds until `excess_tokens` of the queue are computed (at least 1)."""
    if tokens_per_s <= 0:
        return 1
    return max(1, math.ceil(excess_tokens / tokens_per_s))
