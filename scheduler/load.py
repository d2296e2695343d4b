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
