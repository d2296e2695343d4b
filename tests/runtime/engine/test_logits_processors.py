"""Penalties, logit_bias and min_tokens on hand-built logits, against hand-computed values."""

import pytest
import torch

from runtime.engine.logits_processors import apply_logits_processors
from runtime.engine.sampler import Sampler
from runtime.engine.sampling_params import SamplingParams

INF = float("inf")
LOGITS = [2.0, -1.0, 0.5, 3.0, -2.0, 1.0]


def apply(params, output_indices, token_ids, logits=None, eos=()):
    rows = [logits or LOGITS] * len(params)
    x = torch.tensor(rows)
    before = x.clone()
    out = apply_logits_processors(x, params, output_indices, token_ids, eos)
    assert torch.equal(x, before), "the raw logits must stay as they were"
    return out.tolist()


def test_no_processor_returns_the_logits_themselves():
    x = torch.tensor([LOGITS])
    assert apply_logits_processors(x, [SamplingParams()], [0], None, (5,)) is x


def test_logit_bias_adds_to_named_ids():
    p = SamplingParams(logit_bias={1: 5.0, 4: -100})
    assert apply([p], [0], None) == [[2.0, 4.0, 0.5, 3.0, -102.0, 1.0]]


def test_presence_penalty_counts_only_output_tokens_once():
    # Prompt [3, 3], output [0, 0, 2]: tokens 0 and 2 lose 0.5 each; 3 (prompt only) nothing.
    p = SamplingParams(presence_penalty=0.5)
    assert apply([p], [3], [[3, 3, 0, 0, 2]]) == [[1.5, -1.0, 0.0, 3.0, -2.0, 1.0]]


def test_frequency_penalty_scales_with_the_count():
    # Output [0, 0, 2, 5, 0]: token 0 three times (-0.75), 2 and 5 once (-0.25).
    p = SamplingParams(frequency_penalty=0.25)
    assert apply([p], [5], [[3, 0, 0, 2, 5, 0]]) == [[1.25, -1.0, 0.25, 3.0, -2.0, 0.75]]


def test_negative_presence_and_frequency_reward_repeats():
    p = SamplingParams(presence_penalty=-1.0, frequency_penalty=-0.5)
    # Output [1, 1]: 1 gains 1 + 2 * 0.5 = 2.
    assert apply([p], [2], [[4, 1, 1]]) == [[2.0, 1.0, 0.5, 3.0, -2.0, 1.0]]


def test_repetition_penalty_divides_positive_and_multiplies_negative_over_prompt_and_output():
    # Prompt [0, 1], output [2]: 2.0 / 2 = 1.0, -1.0 * 2 = -2.0, 0.5 / 2 = 0.25; others stay.
    p = SamplingParams(repetition_penalty=2.0)
    assert apply([p], [1], [[0, 1, 2]]) == [[1.0, -2.0, 0.25, 3.0, -2.0, 1.0]]


def test_repetition_penalty_below_one_favours_seen_tokens():
    p = SamplingParams(repetition_penalty=0.5)
    assert apply([p], [0], [[3, 4]]) == [[2.0, -1.0, 0.5, 6.0, -1.0, 1.0]]


def test_prior_output_tokens_count_for_presence_and_frequency():
    # A resumed request: prompt [5, 0, 2] whose last two tokens an earlier attempt generated,
    # plus output [2]. Token 2 counted twice, 0 once; 5 was the real prompt.
    p = SamplingParams(frequency_penalty=1.0, num_prior_output_tokens=2)
    assert apply([p], [1], [[5, 0, 2, 2]]) == [[1.0, -1.0, -1.5, 3.0, -2.0, 1.0]]


def test_min_tokens_masks_eos_and_stop_ids_until_reached():
    p = SamplingParams(min_tokens=2, stop_token_ids=[1])
    before, reached = apply([p, p], [1, 2], None, eos=(3,))
    assert before == [2.0, -INF, 0.5, -INF, -2.0, 1.0]
    assert reached == LOGITS


def test_min_tokens_with_ignore_eos_leaves_eos_alone():
    p = SamplingParams(min_tokens=4, stop_token_ids=[5], ignore_eos=True)
    assert apply([p], [0], None, eos=(3,)) == [[2.0, -1.0, 0.5, 3.0, -2.0, -INF]]


def test_all_processors_in_order_bias_repetition_frequency_presence():
    # Token 2: (0.5 + 1.5) / 2 (repetition on the biased logit) - 1 * 1 - 0.5 = -0.5.
    # Token 4: -2 * 2 = -4 (prompt only: no frequency or presence). EOS 3 masked.
    p = SamplingParams(
        logit_bias={2: 1.5},
        repetition_penalty=2.0,
        frequency_penalty=1.0,
        presence_penalty=0.5,
        min_tokens=5,
    )
    out = apply([p], [1], [[4, 2]], eos=(3,))
    assert out == [[2.0, -1.0, -0.5, -INF, -4.0, 1.0]]


def test_rows_keep_their_own_params():
    a = SamplingParams(logit_bias={0: -10})
    b = SamplingParams()
    c = SamplingParams(presence_penalty=2.0)
    out = apply([a, b, c], [0, 0, 1], [[1], [1], [1, 5]])
    assert out == [
        [-8.0, -1.0, 0.5, 3.0, -2.0, 1.0],
        LOGITS,
        [2.0, -1.0, 0.5, 3.0, -2.0, -1.0],
    ]


def test_penalties_without_history_or_bad_ids_raise():
    with pytest.raises(ValueError, match="prompt and output token ids"):
        apply([SamplingParams(presence_penalty=1.0)], [0], None)
    with pytest.raises(ValueError, match=r"logit_bias token ids must be in \[0, 6\)"):
        apply([SamplingParams(logit_bias={6: 1.0})], [0], None)


def test_sampler_takes_penalised_tokens_but_raw_logprobs():
    logits = torch.tensor([LOGITS])
    p = SamplingParams(temperature=0, logit_bias={5: 10.0}, logprobs=1)
    result = Sampler()(logits, [p], [0], [[0]])
    assert result.token_ids == [5]
    raw = torch.tensor(LOGITS).log_softmax(-1)
    assert result.logprobs[0] == pytest.approx(raw[5].item())
    assert result.top_logprobs[0] == [(3, pytest.approx(raw[3].item()))]


def test_sampler_min_tokens_holds_back_eos_when_sampling():
    logits = torch.tensor([[0.0, 50.0, 0.0]]).expand(64, -1)
    p = SamplingParams(min_tokens=1, seed=7)
    ids = Sampler(eos_token_ids=(1,))(logits, [p] * 64, list(range(64)), [[0]] * 64).token_ids
    assert 1 not in ids[:1] and set(ids[1:]) == {1}
