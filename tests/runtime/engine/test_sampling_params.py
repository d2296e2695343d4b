import dataclasses

import pytest

from runtime.engine.sampling_params import SamplingParams


def test_defaults():
    p = SamplingParams()
    assert (p.max_tokens, p.temperature, p.top_k, p.top_p, p.min_p) == (16, 1.0, 0, 1.0, 0.0)
    assert p.seed is None and p.logprobs is None
    assert p.stop == () and p.stop_token_ids == ()
    assert not p.is_greedy


def test_is_greedy_at_zero_temperature_only():
    assert SamplingParams(temperature=0).is_greedy
    assert SamplingParams(temperature=0.0).is_greedy
    assert not SamplingParams(temperature=0.01).is_greedy


def test_stop_normalised_to_tuples():
    assert SamplingParams(stop="END").stop == ("END",)
    assert SamplingParams(stop=["a", "bc"]).stop == ("a", "bc")
    assert SamplingParams(stop_token_ids=[2, 7]).stop_token_ids == (2, 7)


def test_frozen_and_hashable():
    p = SamplingParams(stop=["x"], stop_token_ids=[1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 0.5
    assert hash(p) == hash(SamplingParams(stop=("x",), stop_token_ids=(1,)))


def test_valid_edges_accepted():
    SamplingParams(max_tokens=1, temperature=0, top_k=-1, top_p=1.0, min_p=1.0, logprobs=20)
    SamplingParams(top_k=1, top_p=1e-6, min_p=0.0, logprobs=0, seed=-3)
    SamplingParams(temperature=2, top_p=1)  # ints for float fields are fine


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_tokens": 0}, "max_tokens must be an int >= 1 and <= 4294967295, got 0"),
        ({"max_tokens": -5}, "max_tokens must be an int >= 1 and <= 4294967295, got -5"),
        ({"max_tokens": 2.0}, "max_tokens must be an int >= 1 and <= 4294967295, got 2.0"),
        ({"max_tokens": True}, "max_tokens must be an int >= 1 and <= 4294967295, got True"),
        ({"temperature": -0.5}, "temperature must be >= 0, got -0.5"),
        ({"temperature": float("nan")}, "temperature must be a finite number >= 0, got nan"),
        ({"temperature": float("inf")}, "temperature must be a finite number >= 0, got inf"),
        ({"temperature": "1"}, "temperature must be a finite number >= 0, got '1'"),
        ({"temperature": False}, "temperature must be a finite number >= 0, got False"),
        (
            {"top_k": -2},
            "top_k must be an int >= 1 and <= 2147483647, or 0 or -1 to disable, got -2",
        ),
        (
            {"top_k": 1.5},
            "top_k must be an int >= 1 and <= 2147483647, or 0 or -1 to disable, got 1.5",
        ),
        (
            {"top_k": True},
            "top_k must be an int >= 1 and <= 2147483647, or 0 or -1 to disable, got True",
        ),
        ({"top_p": 0}, "top_p must be in (0, 1], got 0"),
        ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
        ({"top_p": -0.1}, "top_p must be in (0, 1], got -0.1"),
        ({"top_p": float("nan")}, "top_p must be in (0, 1], got nan"),
        ({"min_p": -0.1}, "min_p must be in [0, 1], got -0.1"),
        ({"min_p": 1.01}, "min_p must be in [0, 1], got 1.01"),
        (
            {"seed": 1.0},
            "seed must be None or an int in [-9223372036854775808, 9223372036854775807], got 1.0",
        ),
        (
            {"seed": True},
            "seed must be None or an int in [-9223372036854775808, 9223372036854775807], got True",
        ),
        ({"stop": 5}, "stop must be a str or a list of str, got 5"),
        ({"stop": ["ok", ""]}, "stop must contain only non-empty strings, got '' in ['ok', '']"),
        ({"stop": ["ok", 3]}, "stop must contain only non-empty strings, got 3 in ['ok', 3]"),
        ({"stop": ""}, "stop must contain only non-empty strings, got '' in ('',)"),
        ({"stop_token_ids": 3}, "stop_token_ids must be a list of ints, got 3"),
        (
            {"stop_token_ids": [1, -1]},
            "stop_token_ids must contain only ints >= 0 and <= 4294967295, got -1 in [1, -1]",
        ),
        (
            {"stop_token_ids": ["1"]},
            "stop_token_ids must contain only ints >= 0 and <= 4294967295, got '1' in ['1']",
        ),
        ({"ignore_eos": 1}, "ignore_eos must be a bool, got 1"),
        (
            {"include_stop_str_in_output": "yes"},
            "include_stop_str_in_output must be a bool, got 'yes'",
        ),
        ({"skip_special_tokens": None}, "skip_special_tokens must be a bool, got None"),
        ({"logprobs": -1}, "logprobs must be None or an int in [0, 20], got -1"),
        ({"logprobs": 21}, "logprobs must be None or an int in [0, 20], got 21"),
        ({"logprobs": True}, "logprobs must be None or an int in [0, 20], got True"),
    ],
)
def test_invalid_values_raise_with_field_value_and_allowed_range(kwargs, message):
    with pytest.raises(ValueError) as excinfo:
        SamplingParams(**kwargs)
    assert str(excinfo.value) == message


def test_integers_at_the_wire_bounds_are_accepted():
    # The KV handoff's SamplingParams: max_tokens and stop_token_ids uint32, top_k int32,
    # seed int64.
    p = SamplingParams(
        max_tokens=2**32 - 1, top_k=2**31 - 1, seed=-(2**63), stop_token_ids=[0, 2**32 - 1]
    )
    assert (p.max_tokens, p.top_k, p.seed, p.stop_token_ids) == (
        4294967295,
        2147483647,
        -9223372036854775808,
        (0, 4294967295),
    )
    assert SamplingParams(seed=2**63 - 1).seed == 9223372036854775807


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_tokens": 2**32}, "max_tokens must be an int >= 1 and <= 4294967295, got 4294967296"),
        (
            {"top_k": 2**31},
            "top_k must be an int >= 1 and <= 2147483647, or 0 or -1 to disable, got 2147483648",
        ),
        (
            {"top_k": 2**63},
            "top_k must be an int >= 1 and <= 2147483647, or 0 or -1 to disable, "
            "got 9223372036854775808",
        ),
        (
            {"seed": 2**63},
            "seed must be None or an int in [-9223372036854775808, "
            "9223372036854775807], got 9223372036854775808",
        ),
        (
            {"seed": -(2**63) - 1},
            "seed must be None or an int in [-9223372036854775808, "
            "9223372036854775807], got -9223372036854775809",
        ),
        (
            {"stop_token_ids": [2**32]},
            "stop_token_ids must contain only ints >= 0 and <= "
            "4294967295, got 4294967296 in [4294967296]",
        ),
        (
            {"stop": ["ok", "hi \ud800"]},
            "stop strings must be valid Unicode: 'hi \\ud800' has a lone surrogate at index 3",
        ),
    ],
)
def test_values_the_handoff_wire_cannot_hold_are_refused(kwargs, message):
    with pytest.raises(ValueError) as excinfo:
        SamplingParams(**kwargs)
    assert str(excinfo.value) == message


def test_lone_surrogate_at():
    from runtime.engine.sampling_params import lone_surrogate_at

    assert lone_surrogate_at("plain \U0001f600 text") is None
    assert lone_surrogate_at("ab\udc00") == 2
    assert lone_surrogate_at("\ud800\udc00") == 0  # a pair spelt as two code points is not text
