"""A workload file (`benchmarks/workloads/*.yaml`): vLLM `bench serve`'s random dataset (prompt
and output lengths drawn uniformly within `range_ratio` of their means) at a request rate."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from scheduler.simulator import SimRequest
from scheduler.workload import gamma_arrivals


@dataclass(frozen=True)
class WorkloadSpec:
    """`rate`: the requests per second the deployment must serve (the figures are predicted
    at it); `num_prompts` simulated requests, gamma arrivals of `burstiness` (1: Poisson)."""

    name: str
    input_len: int
    output_len: int
    rate: float
    range_ratio: float = 0.0
    num_prompts: int = 200
    burstiness: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.input_len < 1 or self.output_len < 1:
            raise ValueError(f"workload {self.name}: input_len and output_len must be >= 1")
        if not 0 <= self.range_ratio < 1:
            raise ValueError(f"workload {self.name}: range_ratio must be in [0, 1)")
        if self.rate <= 0 or self.num_prompts < 1 or self.burstiness <= 0:
            raise ValueError(f"workload {self.name}: rate, num_prompts, burstiness must be > 0")

    @property
    def mean_context(self) -> float:
        """Mean keys a decode step attends over (the prompt and half the output)."""
        return self.input_len + self.output_len / 2

    def requests(self, rate: float | None = None) -> list[SimRequest]:
        """The simulator's requests at `rate` (default: the workload's); the same lengths and
        token ids for every rate."""
        arrivals = gamma_arrivals(rate or self.rate, self.num_prompts, self.burstiness, self.seed)
        return [SimRequest(t, prompt, n) for t, (prompt, n) in zip(arrivals, _prompts(self))]


@functools.cache
def _prompts(spec: WorkloadSpec) -> tuple[tuple[tuple[int, ...], int], ...]:
    """Each request's random prompt token ids and output length."""
    rng = random.Random(spec.seed)

    def length(n: int) -> int:
        return max(rng.randint(int(n * (1 - spec.range_ratio)), int(n * (1 + spec.range_ratio))), 1)

    return tuple(
        (
            tuple(rng.randrange(100, 10000) for _ in range(length(spec.input_len))),
            length(spec.output_len),
        )
        for _ in range(spec.num_prompts)
    )


def load_workload(path: str | Path) -> WorkloadSpec:
    data = yaml.safe_load(Path(path).read_text())
    known = {f.name for f in fields(WorkloadSpec)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(
            f"{path}: unknown workload fields {sorted(unknown)} (known: {sorted(known)})"
        )
    data.setdefault("name", Path(path).stem)
    return WorkloadSpec(**data)
