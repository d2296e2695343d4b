"""Workloads for the simulator and the figures of a run, with vLLM `bench serve`'s
definitions."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Outcome(Protocol):
    """What `summarize` reads of a request (a `scheduler.simulator.SimRequest`)."""

    arrival_s: float
    finish_s: float | None
    refused: bool
    num_cached_tokens: int

    @property
    def num_prompt_tokens(self) -> int: ...

    @property
    def ttft_s(self) -> float | None: ...
    @property
    def tpot_s(self) -> float | None: ...


def gamma_arrivals(
    rate: float, n: int, burstiness: float = 1.0, seed: int = 0, start_s: float = 0.0
) -> list[float]:
    """`n` arrival times at `rate` per second, gaps drawn from a gamma distribution of shape
    `burstiness` (1: Poisson; below 1: burstier), as vLLM's `bench serve` draws them."""
    rng = random.Random(seed)
    t, out = start_s, []
    for _ in range(n):
        t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
        out.append(t)
    return out


@dataclass(frozen=True)
class SimSummary:
    """The run's figures, with vLLM `bench serve`'s definitions (goodput: completed requests
    within both SLOs per second of the run)."""

    completed: int
    refused: int
    duration_s: float
    request_throughput: float
    goodput: float
    median_ttft_s: float
    p99_ttft_s: float
    median_tpot_s: float
    p99_tpot_s: float
    prefix_hit_rate: float  # prompt tokens served from prefix caches, of all admitted ones


def summarize(requests: Sequence[Outcome], ttft_slo_s: float, tpot_slo_s: float) -> SimSummary:
    done = [r for r in requests if r.finish_s is not None]
    admitted = [r for r in requests if not r.refused]
    start = min(r.arrival_s for r in requests)
    end = max((r.finish_s for r in done if r.finish_s is not None), default=start)
    duration = max(end - start, 1e-9)
    ttfts = sorted(r.ttft_s for r in done if r.ttft_s is not None)
    tpots = sorted(r.tpot_s for r in done if r.tpot_s is not None)
    good = sum(
        (r.ttft_s or 0.0) <= ttft_slo_s and (r.tpot_s is None or r.tpot_s <= tpot_slo_s)
        for r in done
    )
    return SimSummary(
        completed=len(done),
        refused=sum(r.refused for r in requests),
        duration_s=duration,
        request_throughput=len(done) / duration,
        goodput=good / duration,
        median_ttft_s=statistics.median(ttfts) if ttfts else 0.0,
        p99_ttft_s=_percentile(ttfts, 99),
        median_tpot_s=statistics.median(tpots) if tpots else 0.0,
        p99_tpot_s=_percentile(tpots, 99),
        prefix_hit_rate=sum(r.num_cached_tokens for r in admitted)
        / max(sum(r.num_prompt_tokens for r in admitted), 1),
    )


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    rank = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)
