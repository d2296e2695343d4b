"""SamplingParams' penalty, logit_bias and min_tokens fields: normalised, or refused by name."""

import math

import pytest

from runtime.engine.sampling_params import SamplingParams


def test_defaults_change_nothing():
    p = SamplingParams()
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert p.logit_bias == () and p.min_tokens == 0 and not p.has_penalties


def test_logit_bias_mapping_or_pairs_become_sorted_pairs():
    p = SamplingParams(logit_bias={7: 1, 2: -100.0})
    assert p.logit_bias == ((2, -100.0), (7, 1.0))
    assert SamplingParams(logit_bias=[(7, 1), (2, -100.0)]) == p
    assert hash(p) == hash(SamplingParams(logit_bias={2: -100, 7: 1.0}))
    assert p.has_penalties


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"presence_penalty": 2.5}, r"presence_penalty must be a number in \[-2.0, 2.0\]"),
        ({"frequency_penalty": -2.01}, "frequency_penalty must be"),
        ({"frequency_penalty": math.nan}, "frequency_penalty must be"),
        ({"presence_penalty": True}, "presence_penalty must be"),
        ({"repetition_penalty": 0}, "repetition_penalty must be a finite number > 0"),
        ({"repetition_penalty": math.inf}, "repetition_penalty must be"),
        ({"repetition_penalty": -1.0}, "repetition_penalty must be"),
        ({"min_tokens": -1}, r"min_tokens must be an int >= 0 and <= max_tokens \(16\)"),
        ({"min_tokens": 17}, "min_tokens must be"),
        ({"min_tokens": 2.0}, "min_tokens must be"),
        ({"logit_bias": {1: 100.5}}, r"logit_bias values must be numbers in \[-100.0, 100.0\]"),
        ({"logit_bias": {1: math.nan}}, "logit_bias values"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias keys must be token ids"),
        ({"logit_bias": {"5": 1.0}}, "logit_bias keys must be token ids"),
        ({"logit_bias": [(1, 1.0), (1, 2.0)]}, "names a token id more than once"),
        ({"logit_bias": "x"}, "logit_bias must map token ids to biases"),
        ({"num_prior_output_tokens": -1}, "num_prior_output_tokens must be"),
    ],
)
def test_bad_values_are_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**fields)


def test_min_tokens_up_to_max_tokens():
    assert SamplingParams(max_tokens=4, min_tokens=4).min_tokens == 4


def test_resumed_shrinks_the_budgets_and_counts_sent_tokens_as_prior_output():
    p = SamplingParams(max_tokens=10, min_tokens=5, frequency_penalty=1.0)
    r = p.resumed(3)
    assert (r.max_tokens, r.min_tokens, r.num_prior_output_tokens) == (7, 2, 3)
    assert r.frequency_penalty == 1.0
    again = r.resumed(4)
    assert (again.max_tokens, again.min_tokens, again.num_prior_output_tokens) == (3, 0, 7)
    assert p.resumed(12).max_tokens == 1 and p.resumed(12).min_tokens == 0
