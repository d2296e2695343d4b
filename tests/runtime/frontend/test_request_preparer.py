"""Validation at the frontend: every bad input gets a message that says what to fix."""
import pytest

from runtime.frontend.requests import InvalidRequest, RequestPreparer


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


@pytest.mark.parametrize("call,message", [
    (lambda p: p.prompt_ids(prompt=""), "prompt is empty"),
    (lambda p: p.prompt_ids(token_ids=[]), "prompt_token_ids is empty"),
    (lambda p: p.prompt_ids(token_ids=[-1]), "must be ints in [0, "),
    (lambda p: p.prompt_ids(), "exactly one of"),
    (lambda p: p.prompt_ids(messages=[{"role": "user"}]), "messages[0].content must be a string"),
    (lambda p: p.prompt_ids(messages=["hi"]), "messages[0] must be an object"),
    (lambda p: p.prompt_ids(messages=[{"role": "assistant", "content": "x"}]),
     "last message must not be from the assistant"),
    (lambda p: p.check_model("gpt-4"), "unknown model 'gpt-4'"),
    (lambda p: p.sampling_params(64), "shorten the prompt"),
    (lambda p: p.sampling_params(60, max_tokens=5), "set max_tokens <= 4"),
    (lambda p: p.sampling_params(1, max_tokens=0), "max_tokens must be an int >= 1"),
    (lambda p: p.sampling_params(1, temperature=-1.0), "temperature must be >= 0"),
    (lambda p: p.sampling_params(1, top_p=0.0), "top_p must be in (0, 1]"),
])
def test_bad_inputs_say_what_to_fix(preparer, call, message):
    with pytest.raises(InvalidRequest) as info:
        call(preparer)
    assert message in str(info.value)
