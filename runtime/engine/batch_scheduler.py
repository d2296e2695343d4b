"""Continuous batching with chunked prefill and preemption by recompute."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from runtime.config import SchedulerConfig
from runtime.engine.block_manager import BlockManager
from runtime.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """One step's work: compute `num_new_tokens[i]` tokens of `seqs[i]`."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __bool__(self) -> bool:
        return bool(self.seqs)


class BatchScheduler:
    """Chooses each step's sequences and token counts under the per-step token budget.

    Running sequences go first, in admission order, each taking what it still has to compute
    (one token when decoding, a chunk when prefilling). When blocks run out the most recently
    admitted running sequence is preempted: its blocks are freed and it returns to the front of
    the waiting queue to be recomputed later. Waiting sequences are admitted in FIFO order while
    budget, sequence slots and blocks remain, and never in a step that had to preempt.
    """

    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        # Prefix-cache totals in tokens, counted once per admission (a preempted sequence
        # readmitted looks its tokens up again): what was looked up and what was found.
        self.num_prefix_cache_queries = 0
        self.num_prefix_cache_hits = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def add_running(self, seq: Sequence) -> None:
        """Admit a sequence whose KV is already in its blocks (a decode-side import)."""
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        budget = self.config.max_num_batched_tokens
        chunked = self.config.enable_chunked_prefill
        bm = self.block_manager
        batch = ScheduledBatch()

        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = min(seq.num_uncomputed_tokens, budget)
            if num_new < seq.num_uncomputed_tokens and not chunked:
                i += 1
                continue
            while not bm.can_allocate_slots(seq, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                batch.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                break
            bm.allocate_slots(seq, num_new)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new
            i += 1

        while (
            self.waiting
            and budget > 0
            and not batch.preempted
            and len(self.running) < self.config.max_num_seqs
        ):
            seq = self.waiting[0]
            # Prompt logprobs need every prompt position's logits: no prefix-cache hits then.
            wants_prompt = seq.params.prompt_logprobs is not None
            cached = [] if wants_prompt else bm.find_cached_prefix(seq)
            remaining = seq.num_tokens - len(cached) * bm.block_size
            num_new = min(remaining, budget)
            if num_new < remaining and not chunked:
                break
            if not bm.can_admit(cached, len(cached) * bm.block_size + num_new):
                break
            self.waiting.popleft()
            bm.admit(seq, cached, len(cached) * bm.block_size + num_new)
            self.num_prefix_cache_queries += seq.num_tokens
            self.num_prefix_cache_hits += len(cached) * bm.block_size
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new
        return batch

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out of the queues (finished, aborted or handed off); frees nothing."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
