"""benchmarks/serve.py's generated workloads: lengths, prefix groups, bursts, arrivals."""

from __future__ import annotations

import numpy as np
import pytest
from _serve_datasets import (
    TokenSpace,
    arrival_times,
    burst_dataset,
    prefix_dataset,
    random_dataset,
    sharegpt_like_dataset,
)

TOKENS = TokenSpace(100, {0, 1, 2})


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_random_lengths_stay_in_range_and_skip_special_ids():
    samples = random_dataset(TOKENS, rng(), 400, input_len=100, output_len=20, range_ratio=0.25)
    ins = [s.prompt_len for s in samples]
    outs = [s.output_len for s in samples]
    assert min(ins) >= 75 and max(ins) <= 125 and min(outs) >= 15 and max(outs) <= 25
    assert min(ins) <= 78 and max(ins) >= 122  # uniform: the whole range is drawn
    assert abs(np.mean(ins) - 100) < 3
    ids = {t for s in samples for t in s.prompt_token_ids}
    assert ids.isdisjoint({0, 1, 2}) and ids <= set(range(100))
    fixed = random_dataset(TOKENS, rng(), 5, input_len=7, output_len=3)
    assert [(s.prompt_len, s.output_len) for s in fixed] == [(7, 3)] * 5
    again = random_dataset(TOKENS, rng(), 400, input_len=100, output_len=20, range_ratio=0.25)
    assert [s.prompt_token_ids for s in again] == [s.prompt_token_ids for s in samples]
    with pytest.raises(ValueError, match="range-ratio"):
        random_dataset(TOKENS, rng(), 5, 10, 10, range_ratio=1.0)


def test_sharegpt_like_lengths_are_lognormal_around_the_medians():
    samples = sharegpt_like_dataset(TOKENS, rng(), 2000, 200, 100, sigma=0.9, max_len=1500)
    ins = np.array([s.prompt_len for s in samples])
    outs = np.array([s.output_len for s in samples])
    assert abs(np.median(ins) - 200) < 20 and abs(np.median(outs) - 100) < 10
    assert ins.mean() > 1.3 * np.median(ins)  # the right tail: mean ~ median * exp(sigma^2/2)
    assert ins.min() >= 4 and ins.max() <= 1500
    assert abs(np.std(np.log(ins)) - 0.9) < 0.1


def test_prefix_groups_share_exactly_their_prefix():
    samples = prefix_dataset(
        TOKENS, rng(), 12, prefix_len=16, suffix_len=8, num_prefixes=3, output_len=5
    )
    groups: dict[str, list] = {}
    for s in samples:
        assert s.prompt_len == 24 and s.output_len == 5
        groups.setdefault(s.group, []).append(s.prompt_token_ids)
    assert sorted(len(g) for g in groups.values()) == [4, 4, 4]
    prefixes = {tuple(g[0][:16]) for g in groups.values()}
    assert len(prefixes) == 3
    for members in groups.values():
        assert all(p[:16] == members[0][:16] for p in members)
        assert len({tuple(p[16:]) for p in members}) == len(members)
    with pytest.raises(ValueError, match="num-prefixes"):
        prefix_dataset(TOKENS, rng(), 2, 4, 4, num_prefixes=3, output_len=1)


def test_arrivals_have_the_rate_and_burstiness_asked():
    times = arrival_times(rng(), 2000, rate=4.0, burstiness=1.0)
    assert times == sorted(times) and times[-1] == pytest.approx(500)
    gaps = np.diff(times)
    assert abs(gaps.mean() - 0.25) < 0.01
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.1  # exponential: CV 1
    bursty = np.diff(arrival_times(rng(), 2000, rate=4.0, burstiness=0.25))
    assert abs(bursty.std() / bursty.mean() - 2.0) < 0.25  # gamma: CV 1/sqrt(k)
    assert arrival_times(rng(), 3, float("inf")) == [0.0, 0.0, 0.0]


def test_bursts_of_long_prompts_over_a_steady_stream():
    steady = random_dataset(TOKENS, rng(), 40, input_len=10, output_len=4)
    samples = burst_dataset(
        TOKENS,
        rng(1),
        steady,
        rate=2.0,
        burstiness=1.0,
        burst_input_len=64,
        burst_output_len=2,
        burst_size=3,
        burst_interval_s=5.0,
    )
    arrivals = [s.arrival_s for s in samples]
    assert arrivals == sorted(arrivals)
    bursts = [s for s in samples if s.group == "burst"]
    # steady stream ends at 40 / 2 = 20 s: bursts at 2.5, 7.5, 12.5, 17.5
    assert sorted({s.arrival_s for s in bursts}) == [2.5, 7.5, 12.5, 17.5]
    assert len(bursts) == 12 and all((s.prompt_len, s.output_len) == (64, 2) for s in bursts)
    kept = [s for s in samples if s.group == "steady"]
    # the steady requests keep their order (their arrivals increase)
    assert [s.prompt_token_ids for s in kept] == [s.prompt_token_ids for s in steady]
    assert max(s.arrival_s for s in kept) == pytest.approx(20)
