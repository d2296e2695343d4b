"""Cost models of the simulator's workers: how long a step, a prompt and a handoff take."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrefillCost:
    """One prefill step computing `n` prompt tokens takes `step_s + n * token_s`."""

    token_s: float
    step_s: float = 0.0

    def step_seconds(self, num_tokens: int) -> float:
        return self.step_s + num_tokens * self.token_s


@dataclass(frozen=True)
class DecodeCost:
    """One decode step over a batch of `b` sequences takes `step_s + b * seq_s`."""

    step_s: float
    seq_s: float = 0.0

    def step_seconds(self, batch: int) -> float:
        return self.step_s + batch * self.seq_s


@dataclass(frozen=True)
class TransferCost:
    """Handing off `n` tokens of KV takes `latency_s + n * bytes_per_token / bytes_per_s`."""

    bytes_per_token: float
    bytes_per_s: float
    latency_s: float = 0.0

    def seconds(self, num_tokens: int) -> float:
        return self.latency_s + num_tokens * self.bytes_per_token / self.bytes_per_s


@dataclass(frozen=True)
class WorkerSpec:
    """One simulated worker: its role ("prefill", "decode" or "colocated"), its costs (a
    colocated worker uses both; a step mixing prompt chunks and decode sequences takes the
    sum), and its engine's limits: tokens per step, sequences per batch, KV blocks."""

    name: str
    role: str
    prefill: PrefillCost | None = None
    decode: DecodeCost | None = None
    max_num_batched_tokens: int = 512
    max_num_seqs: int = 64
    num_blocks: int = 4096
    block_size: int = 16

    def __post_init__(self) -> None:
        if self.role in ("prefill", "colocated") and self.prefill is None:
            raise ValueError(f"worker {self.name}: a {self.role} worker needs a prefill cost")
        if self.role in ("decode", "colocated") and self.decode is None:
            raise ValueError(f"worker {self.name}: a {self.role} worker needs a decode cost")
