"""A request's token sequence as the engine tracks it through scheduling and generation."""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from runtime.engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued; no KV (or KV dropped by preemption)
    RUNNING = "running"  # holds blocks and is scheduled each step
    PREFILLED = "prefilled"  # prefill role: first token sampled, blocks held for export
    FINISHED = "finished"


class Sequence:
    """Prompt plus generated tokens, with the bookkeeping the scheduler needs.

    `num_computed_tokens` counts the leading tokens whose KV is in the cache; a step computes
    `token_ids[num_computed_tokens : num_computed_tokens + n]` and samples once that reaches
    `num_tokens`. Prefill, chunked prefill, decode and recompute after preemption are all this
    one rule.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: "SamplingParams",
        arrival_time: float | None = None,
    ) -> None:
        self.request_id = request_id
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache
        self.num_preemptions = 0
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []  # chained hashes of the full blocks, by index
        self.num_committed_blocks = 0  # leading blocks registered in the prefix cache
        self.logprobs: list[float | None] = []
        self.top_logprobs: list[list[tuple[int, float]] | None] = []
        # Prompt tokens 1.. (a prompt's first token has none), when params.prompt_logprobs.
        self.prompt_logprobs: list[float] = []
        self.prompt_top_logprobs: list[list[tuple[int, float]]] = []

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id!r}, {self.status.value}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={self.block_table})"
        )
