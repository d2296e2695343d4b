"""Validation at the frontend: every bad input gets a message that says what to fix."""

import pytest

from runtime.frontend.requests import InvalidRequest, RequestLimits, RequestPreparer


@pytest.fixture(scope="module")
def preparer(tiny_model_dir):
    return RequestPreparer.for_model("tiny", str(tiny_model_dir), max_model_len=64)


def test_text_chat_and_token_inputs(preparer):
    ids = preparer.prompt_ids(prompt="Hello world!")
    assert ids == preparer.tokenizer.encode("Hello world!")
    chat = preparer.prompt_ids(messages=[{"role": "user", "content": "Hi"}])
    assert preparer.tokenizer.decode(chat) == "<user>Hi\n<assistant>"
    assert preparer.prompt_ids(token_ids=[1, 2, 3]) == [1, 2, 3]


def test_max_tokens_defaults_to_the_rest_of_the_context(preparer):
    assert preparer.sampling_params(10).max_tokens == 54
    assert preparer.sampling_params(10, max_tokens=54, temperature=0.0).is_greedy


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda p: p.prompt_ids(prompt=""), "prompt is empty"),
        (lambda p: p.prompt_ids(token_ids=[]), "prompt_token_ids is empty"),
        (lambda p: p.prompt_ids(token_ids=[-1]), "must be ints in [0, "),
        (lambda p: p.prompt_ids(), "exactly one of"),
        (
            lambda p: p.prompt_ids(messages=[{"role": "user"}]),
            "messages[0].content must be a string",
        ),
        (lambda p: p.prompt_ids(messages=["hi"]), "messages[0] must be an object"),
        (
            lambda p: p.prompt_ids(messages=[{"role": "assistant", "content": "x"}]),
            "last message must not be from the assistant",
        ),
        (lambda p: p.check_model("gpt-4"), "unknown model 'gpt-4'"),
        (lambda p: p.sampling_params(64), "shorten the prompt"),
        (lambda p: p.sampling_params(60, max_tokens=5), "set max_tokens <= 4"),
        (lambda p: p.sampling_params(1, max_tokens=0), "max_tokens must be an int >= 1"),
        (lambda p: p.sampling_params(1, temperature=-1.0), "temperature must be >= 0"),
        (lambda p: p.sampling_params(1, top_p=0.0), "top_p must be in (0, 1]"),
        (
            lambda p: p.prompt_ids(token_ids=[1] * 64),
            "the prompt has 64 tokens but the context holds 64",
        ),
        (
            lambda p: p.prompt_ids(prompt="a" * 449),
            "prompt has 449 characters, more than the 448 that can fit the context of 64 tokens",
        ),
        (
            lambda p: p.prompt_ids(prompt="hi \udc00"),
            "prompt is not valid Unicode: it has a lone surrogate ('\\udc00') at character 3",
        ),
        (
            lambda p: p.prompt_ids(messages=[{"role": "user", "content": "\ud800x"}]),
            "messages[0].content is not valid Unicode: it has a lone surrogate ('\\ud800') at "
            "character 0",
        ),
        (
            lambda p: p.prompt_ids(messages=[{"role": "user", "content": "hi"}] * 1025),
            "1025 messages: at most 1024 are allowed",
        ),
        (
            lambda p: p.prompt_ids(messages=[{"role": ["user"], "content": "hi"}]),
            "messages[0].role must be one of",
        ),
        (
            lambda p: p.sampling_params(1, stop=["x"] * 17),
            "17 stop strings: at most 16 are allowed",
        ),
        (
            lambda p: p.sampling_params(1, stop="x" * 257),
            "a stop string has 257 characters: at most 256 are allowed",
        ),
        (
            lambda p: p.sampling_params(1, stop_token_ids=[0] * 257),
            "257 stop_token_ids: at most 256 are allowed",
        ),
        (
            lambda p: p.sampling_params(1, stop_token_ids=[3, 320, 10**6]),
            "stop_token_ids must be token ids in [0, 320), got [320, 1000000]",
        ),
        (
            lambda p: p.sampling_params(1, top_k=2**63),
            "top_k must be an int >= 1 and <= 2147483647",
        ),
        (lambda p: p.sampling_params(1, seed=2**63), "seed must be None or an int in"),
        (
            lambda p: p.check_request_id("x" * 129),
            "request_id must be at most 128 printable characters, got 129 characters",
        ),
    ],
)
def test_bad_inputs_say_what_to_fix(preparer, call, message):
    with pytest.raises(InvalidRequest) as info:
        call(preparer)
    assert message in str(info.value)


def test_the_prompt_character_limit_follows_the_context_and_the_longest_token(preparer):
    longest = max(map(len, preparer.tokenizer.get_vocab()))
    assert longest == 7 and preparer.max_prompt_chars == 64 * 7
    assert preparer.prompt_ids(prompt="a" * 448)  # at the limit: tokenized


def test_limits_are_one_frozen_config(tiny_model_dir):
    limits = RequestLimits(
        max_prompt_chars=5,
        max_chat_messages=1,
        max_stop_strings=1,
        max_stop_chars=2,
        max_stop_token_ids=1,
        max_request_id_chars=3,
    )
    p = RequestPreparer.for_model("tiny", str(tiny_model_dir), 64, limits)
    assert p.max_prompt_chars == 5 and p.limits.max_request_bytes == 8 << 20
    p.prompt_ids(prompt="a" * 5)
    for call, message in [
        (lambda: p.prompt_ids(prompt="a" * 6), "prompt has 6 characters, more than the 5"),
        (
            lambda: p.prompt_ids(messages=[{"role": "user", "content": "x"}] * 2),
            "2 messages: at most 1 are allowed",
        ),
        (lambda: p.sampling_params(1, stop=["a", "b"]), "2 stop strings: at most 1 are"),
        (lambda: p.sampling_params(1, stop="abc"), "a stop string has 3 characters: at most 2"),
        (lambda: p.sampling_params(1, stop_token_ids=[1, 2]), "2 stop_token_ids: at most 1"),
        (lambda: p.check_request_id("abcd"), "request_id must be at most 3 printable"),
    ]:
        with pytest.raises(InvalidRequest, match="^" + message.replace("(", "\\(")):
            call()
