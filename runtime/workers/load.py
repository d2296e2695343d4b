"""The load report a worker publishes after its engine steps."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerLoad:
    """One worker's load snapshot, as it reports it after its engine steps; the scheduler
    reads it as a `scheduler.LoadSnapshot`.

    `num_queued_prompt_tokens`: prompt tokens admitted but not yet computed (prefill work
    ahead of a new request). `num_running`: sequences holding KV blocks and decoding.
    `prefill_tokens_per_s`: prompt tokens per second of the worker's recent steps that
    computed any (0: none yet), what admission divides the queue by to predict a wait.
    `decode_step_s` + `decode_step_s_per_seq` * batch: its recent decode step time (both 0:
    no decode-only step yet), what admission predicts a time per output token with.
    `busy_s`: seconds spent in engine steps since the process started (its utilization is
    the growth of that over wall time). `max_num_seqs`: the engine's batch limit.
    `healthy` is False in the reports the frontend makes up for a worker that did not answer.
    `incarnation` names the worker process that reported it: it changes when the worker is
    restarted, so whoever routes to it knows to look up its new addresses.
    Totals since the process started (its metrics; they restart at 0 with a new
    incarnation): `num_prefix_cache_queries` / `num_prefix_cache_hits` (prompt tokens looked
    up in / found in its prefix cache), `handoff_failures` ((gRPC status name, count) of
    the KV handoffs this prefill worker started that failed), `num_preemptions`.
    """

    name: str
    role: str  # "prefill" | "decode" | "colocated"
    num_queued_prompt_tokens: int = 0
    num_running: int = 0
    num_waiting: int = 0
    num_free_blocks: int = 0
    num_total_blocks: int = 0
    block_size: int = 0
    prefill_tokens_per_s: float = 0.0
    decode_step_s: float = 0.0
    decode_step_s_per_seq: float = 0.0
    busy_s: float = 0.0
    max_num_seqs: int = 0
    healthy: bool = True
    incarnation: str = ""
    num_prefix_cache_queries: int = 0
    num_prefix_cache_hits: int = 0
    handoff_failures: tuple[tuple[str, int], ...] = ()
    num_preemptions: int = 0
