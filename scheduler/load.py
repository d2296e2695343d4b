"""What the scheduler reads of a worker's load: any object with these attributes (the
runtime's workers report a `runtime.workers.load.WorkerLoad`; tests and simulators pass
their own), and the rate meter both measure with."""

from __future__ import annotations

from typing import Protocol


class LoadSnapshot(Protocol):
    """One worker's state at its last report. `role`: "prefill", "decode" or "colocated".
    `num_queued_prompt_tokens`: prompt tokens admitted but not yet computed.
    `num_running` / `num_waiting`: sequences decoding / waiting for blocks or a batch slot.
    `num_free_blocks` of `block_size` tokens each (a `block_size` of 0: unknown).
    `prefill_tokens_per_s`: the prompt tokens per second the worker has been computing lately
    (0: not measured yet).
    `decode_step_s` / `decode_step_s_per_seq`: its recent decode step time as a fixed part
    plus a part per sequence in the batch (a `StepTimeModel`; both 0: not measured yet).
    `healthy`: False takes the worker out of routing."""

    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def num_queued_prompt_tokens(self) -> int: ...
    @property
    def num_running(self) -> int: ...
    @property
    def num_waiting(self) -> int: ...
    @property
    def num_free_blocks(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def prefill_tokens_per_s(self) -> float: ...
    @property
    def decode_step_s(self) -> float: ...
    @property
    def decode_step_s_per_seq(self) -> float: ...
    @property
    def healthy(self) -> bool: ...


class RateMeter:
    """A recent rate (units per second of busy time): exponentially decayed sums of units
    and of the seconds spent on them, halving every `half_life_s` of busy time, so a change
    in load or hardware shows within a few seconds and one odd step does not swing it."""

    def __init__(self, half_life_s: float = 5.0):
        self.half_life_s = half_life_s
        self._units = 0.0
        self._seconds = 0.0

    def add(self, units: float, seconds: float) -> None:
        if seconds <= 0:
            return
        keep = 0.5 ** (seconds / self.half_life_s)
        self._units = self._units * keep + units
        self._seconds = self._seconds * keep + seconds

    @property
    def rate(self) -> float:
        """Units per second; 0 before anything was measured."""
        return self._units / self._seconds if self._seconds else 0.0


class StepTimeModel:
    """A recent step time as a line over the batch size, `seconds = base_s + per_seq_s *
    batch`: a least-squares fit over exponentially decayed sums of the steps seen (halving
    every `half_life_s` of step time), so it follows the worker's hardware and what else
    runs beside it. The slope is shrunk toward 0 while the batch sizes seen barely vary
    (a batch-size variance of `prior_seqs2` weighs as much as the data), and is never
    negative: a model fitted at one batch size predicts that step time for any."""

    def __init__(self, half_life_s: float = 5.0, prior_seqs2: float = 1.0):
        self.half_life_s = half_life_s
        self.prior_seqs2 = prior_seqs2
        self._w = self._n = self._nn = self._s = self._ns = 0.0

    def add(self, batch: int, seconds: float) -> None:
        if seconds <= 0 or batch <= 0:
            return
        keep = 0.5 ** (seconds / self.half_life_s)
        self._w = self._w * keep + 1
        self._n = self._n * keep + batch
        self._nn = self._nn * keep + batch * batch
        self._s = self._s * keep + seconds
        self._ns = self._ns * keep + batch * seconds

    @property
    def per_seq_s(self) -> float:
        if not self._w:
            return 0.0
        mean_n, mean_s = self._n / self._w, self._s / self._w
        var = self._nn / self._w - mean_n * mean_n
        cov = self._ns / self._w - mean_n * mean_s
        return max(0.0, cov / (var + self.prior_seqs2))

    @property
    def base_s(self) -> float:
        """The fixed part (0 before any step was seen)."""
        if not self._w:
            return 0.0
        return max(0.0, (self._s - self.per_seq_s * self._n) / self._w)


def predicted_step_s(load: LoadSnapshot, batch: float) -> float:
    """A decode step's predicted seconds on that worker with `batch` sequences (fractional
    for a share of the sequences to come; 0: the worker has not measured its steps yet)."""
    return load.decode_step_s + load.decode_step_s_per_seq * batch
