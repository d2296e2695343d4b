"""Which prompt positions of a step need their logits kept for prompt logprobs.

The logits at position p give the distribution of token p + 1, so a prompt of P tokens has
P - 1 prompt logprobs (the first token has none). A sequence asking for them records them
in order in `seq.prompt_logprobs`; a position already recorded (recompute after preemption)
is not asked for again.
"""

from __future__ import annotations

from typing import NamedTuple

from runtime.engine.batch_scheduler import ScheduledBatch


class PromptLogprobSpan(NamedTuple):
    """Positions [start, end) of `batch.seqs[seq_index]` whose logits the step keeps; their
    rows in the batch's input start at `row`."""

    seq_index: int
    start: int
    end: int
    row: int


def prompt_logprob_spans(batch: ScheduledBatch, first_rows: list[int]) -> list[PromptLogprobSpan]:
    """The spans of `batch`, given the input row of each sequence's first new token
    (`first_rows[i]` for `batch.seqs[i]`)."""
    spans = []
    for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
        if seq.params.prompt_logprobs is None:
            continue
        begin = seq.num_computed_tokens
        start = max(begin, len(seq.prompt_logprobs))
        end = min(begin + n, seq.num_prompt_tokens - 1)
        if start < end:
            spans.append(PromptLogprobSpan(i, start, end, first_rows[i] + start - begin))
    return spans


def num_prompt_logprob_rows(batch: ScheduledBatch) -> int:
    """How many extra logits rows the runner returns for `batch` (after the sampled ones)."""
    return sum(s.end - s.start for s in prompt_logprob_spans(batch, [0] * len(batch.seqs)))
