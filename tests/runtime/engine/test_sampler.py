import math

import pytest
import torch

from runtime.engine.sampler import Sampler, row_seed
from runtime.engine.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0)


def draw_many(logits_row, params, n, sampler=None, first_index=0):
    """Sample one logits row `n` times in a single batch; returns a count per token id."""
    sampler = sampler or Sampler(seed=1234)
    logits = logits_row.unsqueeze(0).expand(n, -1).contiguous()
    indices = range(first_index, first_index + n)
    result = sampler(logits, [params] * n, list(indices))
    return torch.bincount(torch.tensor(result.token_ids), minlength=logits_row.numel())


def logits_of(probs):
    return torch.tensor(probs, dtype=torch.float32).log()


def test_greedy_equals_argmax():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    result = Sampler()(logits, [GREEDY] * 6, [0] * 6)
    assert result.token_ids == logits.argmax(-1).tolist()
    assert result.logprobs == [None] * 6 and result.top_logprobs == [None] * 6


def test_greedy_ties_take_lowest_id():
    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0], [5.0, 5.0, 5.0, 5.0]])
    assert Sampler()(logits, [GREEDY] * 2, [0, 0]).token_ids == [1, 0]


def test_all_greedy_does_not_sort_or_softmax(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("all-greedy step must only argmax")

    for name in ("sort", "softmax", "log_softmax", "topk", "exponential_"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    logits = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    expected = logits.argmax(-1).tolist()
    assert Sampler()(logits, [GREEDY] * 4, [0, 1, 2, 3]).token_ids == expected


def test_greedy_rows_in_mixed_batch_equal_argmax():
    logits = torch.randn(5, 40, generator=torch.Generator().manual_seed(2))
    params = [GREEDY, SamplingParams(), GREEDY, SamplingParams(seed=3, top_p=0.5), GREEDY]
    ids = Sampler()(logits, params, [0] * 5).token_ids
    argmax = logits.argmax(-1).tolist()
    assert [ids[0], ids[2], ids[4]] == [argmax[0], argmax[2], argmax[4]]


def test_top_k_1_equals_greedy():
    logits = torch.randn(64, 30, generator=torch.Generator().manual_seed(3))
    logits[0, 7] = logits[0, 9] = logits[0].max() + 1  # a tie at the top: lowest id wins
    params = [SamplingParams(top_k=1, temperature=1.5)] * 32 + [
        SamplingParams(top_k=1, seed=5)
    ] * 32
    result = Sampler()(logits, params, list(range(64)))
    assert result.token_ids == logits.argmax(-1).tolist()
    assert result.token_ids[0] == 7


PROBS = [0.05, 0.4, 0.1, 0.3, 0.15]  # ranked by prob: ids 1, 3, 4, 2, 0


@pytest.mark.parametrize(
    "params, allowed",
    [
        (SamplingParams(top_k=2), {1, 3}),
        (SamplingParams(top_k=3, temperature=3.0), {1, 3, 4}),
        (SamplingParams(top_p=0.35), {1}),
        (SamplingParams(top_p=0.65), {1, 3}),
        (SamplingParams(top_p=0.8), {1, 3, 4}),
        (SamplingParams(min_p=0.5), {1, 3}),  # drops p < 0.2
        (SamplingParams(min_p=0.3), {1, 3, 4}),  # drops p < 0.12
        (SamplingParams(top_k=4, top_p=0.9, min_p=0.2), {1, 3, 4, 2}),
        (SamplingParams(top_k=4, top_p=0.65, min_p=0.01), {1, 3}),
        # top-p runs on the top-k renormalised probs: 0.4/0.7 = 0.57 < 0.6, so 2 survive.
        (SamplingParams(top_k=2, top_p=0.6), {1, 3}),
    ],
)
def test_filters_never_leave_allowed_set(params, allowed):
    counts = draw_many(logits_of(PROBS), params, 4000)
    drawn = {i for i, c in enumerate(counts.tolist()) if c}
    assert drawn == allowed  # nothing outside, and every allowed token shows up


def test_seeded_filters_never_leave_allowed_set():
    params = [SamplingParams(top_k=3, seed=s) for s in range(500)]
    logits = logits_of(PROBS).expand(500, -1).contiguous()
    ids = Sampler()(logits, params, [0] * 500).token_ids
    assert set(ids) == {1, 3, 4}


def test_temperature_scales_before_top_p():
    # At temperature 0.25 the probs become ~[0, .75, 0, .24, .01]; top_p=0.7 keeps only id 1.
    counts = draw_many(logits_of(PROBS), SamplingParams(temperature=0.25, top_p=0.7), 2000)
    assert counts.tolist() == [0, 2000, 0, 0, 0]


def chi_square(counts, probs):
    n = counts.sum().item()
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts.tolist(), probs))


def test_unseeded_draws_follow_distribution():
    counts = draw_many(logits_of(PROBS), SamplingParams(), 20000)
    assert chi_square(counts, PROBS) < 18.5  # chi-square, 4 dof, p = 0.001


def test_unseeded_draws_follow_tempered_distribution():
    tempered = [p**0.5 for p in PROBS]
    tempered = [p / sum(tempered) for p in tempered]
    counts = draw_many(logits_of(PROBS), SamplingParams(temperature=2.0), 20000)
    assert chi_square(counts, tempered) < 18.5


def test_seeded_draws_over_seeds_follow_distribution():
    n = 5000
    params = [SamplingParams(seed=s) for s in range(n)]
    ids = Sampler()(logits_of(PROBS).expand(n, -1).contiguous(), params, [0] * n).token_ids
    counts = torch.bincount(torch.tensor(ids), minlength=5)
    assert chi_square(counts, PROBS) < 18.5


def test_unseeded_reproducible_per_engine_seed():
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(4))
    params = [SamplingParams()] * 8

    def run(seed):
        return [Sampler(seed)(logits, params, [0] * 8).token_ids for _ in range(3)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def seeded_stream(sampler, logits, params, num_tokens):
    return [sampler(logits[None], [params], [i]).token_ids[0] for i in range(num_tokens)]


def test_seeded_reproducible_and_independent_of_history():
    logits = torch.zeros(1000)  # uniform: every draw is decided by the noise alone
    params = SamplingParams(seed=42)
    fresh = seeded_stream(Sampler(seed=0), logits, params, 20)
    used = Sampler(seed=99)
    used(torch.randn(16, 1000), [SamplingParams()] * 16, [0] * 16)
    assert seeded_stream(used, logits, params, 20) == fresh
    assert len(set(fresh)) > 15  # output index changes the draw
    assert seeded_stream(Sampler(), logits, SamplingParams(seed=43), 20) != fresh


def test_seeded_resumes_mid_stream_on_another_engine():
    logits = torch.zeros(1000)
    params = SamplingParams(seed=11, top_p=0.9)
    full = seeded_stream(Sampler(seed=1), logits, params, 10)
    decode_engine = Sampler(seed=2)
    resumed = [decode_engine(logits[None], [params], [i]).token_ids[0] for i in range(5, 10)]
    assert resumed == full[5:]


def test_seeded_resumed_request_draws_as_if_never_interrupted():
    # After a worker death the request resumes with its sent tokens appended to the prompt and
    # output index 0 again; its draws must still be those of output indices 4, 5, ...
    logits = torch.zeros(1000)
    params = SamplingParams(seed=17, temperature=0.7)
    full = seeded_stream(Sampler(seed=1), logits, params, 10)
    rest = seeded_stream(Sampler(seed=2), logits, params.resumed(4), 6)
    assert rest == full[4:]


def test_seeded_independent_of_batch_position_and_composition():
    gen = torch.Generator().manual_seed(5)
    target = torch.randn(200, generator=gen)
    params = SamplingParams(seed=123, temperature=0.8, top_k=50, top_p=0.95, min_p=0.01)
    alone = [Sampler()(target[None], [params], [i]).token_ids[0] for i in range(30)]
    for position, batch_size in [(0, 4), (3, 4), (6, 7)]:
        batched = []
        for i in range(30):
            logits = torch.randn(batch_size, 200, generator=gen)
            logits[position] = target
            others = [
                SamplingParams(),
                GREEDY,
                SamplingParams(seed=9, top_k=5),
                SamplingParams(top_p=0.3),
            ]
            batch = [others[j % 4] for j in range(batch_size)]
            batch[position] = params
            indices = [j * 3 for j in range(batch_size)]
            indices[position] = i
            batched.append(Sampler(seed=i)(logits, batch, indices).token_ids[position])
        assert batched == alone


def test_row_seed_depends_on_both_inputs():
    assert row_seed(1, 0) == row_seed(1, 0)
    assert len({row_seed(s, i) for s in range(10) for i in range(10)}) == 100
    assert 0 <= row_seed(-1, 5) < 2**64


def test_logprobs_match_raw_log_softmax_and_are_sorted():
    logits = torch.randn(4, 64, generator=torch.Generator().manual_seed(6))
    params = [
        SamplingParams(temperature=0, logprobs=5),
        SamplingParams(temperature=0.5, top_k=3, logprobs=20, seed=1),
        SamplingParams(),
        SamplingParams(top_p=0.5, logprobs=0),
    ]
    result = Sampler()(logits, params, [0, 0, 0, 0])
    expected = torch.log_softmax(logits, dim=-1)
    for i in (0, 1, 3):
        assert result.logprobs[i] == pytest.approx(
            expected[i, result.token_ids[i]].item(), abs=1e-6
        )
    assert result.logprobs[2] is None and result.top_logprobs[2] is None
    assert result.top_logprobs[3] == []
    for i, n in ((0, 5), (1, 20)):
        top = result.top_logprobs[i]
        values, ids = expected[i].topk(n)
        assert [t for t, _ in top] == ids.tolist()
        assert [v for _, v in top] == pytest.approx(values.tolist(), abs=1e-6)
        assert all(a[1] >= b[1] for a, b in zip(top, top[1:]))
        assert all(isinstance(t, int) and isinstance(v, float) for t, v in top)
    assert result.top_logprobs[0][0][0] == result.token_ids[0]  # greedy takes the top token
    assert math.isclose(sum(math.exp(v) for v in expected[0].tolist()), 1.0, rel_tol=1e-5)


def test_mismatched_lengths_rejected():
    with pytest.raises(ValueError, match="3 rows, 2 params, 3 output indices"):
        Sampler()(torch.zeros(3, 4), [GREEDY] * 2, [0, 0, 0])
