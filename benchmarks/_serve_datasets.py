"""benchmarks/serve.py's workloads, generated from stated parameters (nothing downloaded), and
their arrival times.

Every dataset is a list of `Sample`s: prompt token ids (drawn uniformly from the vocabulary's
ordinary ids), the output tokens to ask for, and, for `burst`, its own arrival time.
- random: vLLM's random dataset; input and output lengths uniform within
  `len * (1 -/+ range_ratio)`.
- sharegpt-like: chat-like lengths, log-normal around the given medians (a long right tail,
  as in chat logs), clipped to [min_len, max_len].
- prefix: vLLM's prefix_repetition; `num_prefixes` groups, each sharing one prefix of
  `prefix_len` tokens, followed by a random suffix of `suffix_len` tokens.
- burst: a steady random stream at the request rate, plus bursts of long prompts: every
  `interval_s`, `size` prompts of `input_len` tokens arrive at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One request of a workload; `arrival_s` is set only by datasets that carry their own
    timing (offset from the start of the run)."""

    prompt_token_ids: list[int]
    output_len: int
    arrival_s: float | None = None
    group: str = "steady"

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


class TokenSpace:
    """Draws random prompt token ids from [0, vocab_size) leaving out `special_ids`."""

    def __init__(self, vocab_size: int, special_ids: set[int] | frozenset = frozenset()):
        ids = np.setdiff1d(np.arange(vocab_size), np.fromiter(special_ids, int, len(special_ids)))
        if ids.size == 0:
            raise ValueError("the vocabulary has no ordinary token ids")
        self.ids = ids

    def draw(self, rng: np.random.Generator, n: int) -> list[int]:
        return self.ids[rng.integers(0, self.ids.size, n)].tolist()


def _uniform_lens(rng, n: int, length: int, range_ratio: float) -> np.ndarray:
    if not 0 <= range_ratio < 1:
        raise ValueError(f"--random-range-ratio {range_ratio}: must be in [0, 1)")
    low = max(1, int(np.floor(length * (1 - range_ratio))))
    high = max(low, int(np.ceil(length * (1 + range_ratio))))
    return rng.integers(low, high + 1, n)


def random_dataset(
    tokens: TokenSpace,
    rng: np.random.Generator,
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: float = 0.0,
) -> list[Sample]:
    ins = _uniform_lens(rng, num_prompts, input_len, range_ratio)
    outs = _uniform_lens(rng, num_prompts, output_len, range_ratio)
    return [Sample(tokens.draw(rng, int(i)), int(o)) for i, o in zip(ins, outs)]


def sharegpt_like_dataset(
    tokens: TokenSpace,
    rng: np.random.Generator,
    num_prompts: int,
    input_median: int,
    output_median: int,
    sigma: float,
    min_len: int = 4,
    max_len: int = 2048,
) -> list[Sample]:
    def lens(median: int) -> np.ndarray:
        raw = rng.lognormal(np.log(median), sigma, num_prompts)
        return np.clip(np.rint(raw), min_len, max_len).astype(int)

    ins, outs = lens(input_median), lens(output_median)
    return [Sample(tokens.draw(rng, int(i)), int(o)) for i, o in zip(ins, outs)]


def prefix_dataset(
    tokens: TokenSpace,
    rng: np.random.Generator,
    num_prompts: int,
    prefix_len: int,
    suffix_len: int,
    num_prefixes: int,
    output_len: int,
) -> list[Sample]:
    """`num_prompts` split as evenly as possible over `num_prefixes` groups, shuffled."""
    if num_prefixes < 1 or num_prefixes > num_prompts:
        raise ValueError(f"--prefix-repetition-num-prefixes must be in [1, {num_prompts}]")
    prefixes = [tokens.draw(rng, prefix_len) for _ in range(num_prefixes)]
    samples = [
        Sample(
            prefixes[i % num_prefixes] + tokens.draw(rng, suffix_len),
            output_len,
            None,
            f"p{i % num_prefixes}",
        )
        for i in range(num_prompts)
    ]
    order = rng.permutation(num_prompts)
    return [samples[i] for i in order]


def arrival_times(
    rng: np.random.Generator, n: int, rate: float, burstiness: float = 1.0
) -> list[float]:
    """vLLM's arrival process: gamma-distributed gaps of mean 1/rate (burstiness 1: Poisson;
    lower: burstier), scaled so the last request arrives at n/rate; all at 0 for an
    infinite rate."""
    if rate == float("inf"):
        return [0.0] * n
    if rate <= 0 or burstiness <= 0:
        raise ValueError("--request-rate and --burstiness must be positive")
    gaps = rng.gamma(burstiness, 1.0 / (rate * burstiness), n)
    times = np.cumsum(gaps)
    if times[-1] > 0:
        times *= (n / rate) / times[-1]
    return times.tolist()


def burst_dataset(
    tokens: TokenSpace,
    rng: np.random.Generator,
    steady: list[Sample],
    rate: float,
    burstiness: float,
    burst_input_len: int,
    burst_output_len: int,
    burst_size: int,
    burst_interval_s: float,
) -> list[Sample]:
    """`steady` at `rate`, plus a burst of `burst_size` long prompts every
    `burst_interval_s` from `burst_interval_s / 2` until the steady stream's last arrival
    (at least one burst); sorted by arrival."""
    if rate == float("inf"):
        raise ValueError("--dataset-name burst needs a finite --request-rate")
    times = arrival_times(rng, len(steady), rate, burstiness)
    out = [Sample(s.prompt_token_ids, s.output_len, t, "steady") for s, t in zip(steady, times)]
    start = burst_interval_s / 2
    num_bursts = max(1, int((times[-1] - start) // burst_interval_s) + 1)
    for b in range(num_bursts):
        at = start + b * burst_interval_s
        out += [
            Sample(tokens.draw(rng, burst_input_len), burst_output_len, at, "burst")
            for _ in range(burst_size)
        ]
    return sorted(out, key=lambda s: s.arrival_s or 0.0)
