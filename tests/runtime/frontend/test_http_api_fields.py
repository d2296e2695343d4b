"""Which body fields the OpenAI edge takes: a field Tandem does not implement is refused with
a 400 naming it, the self-hosting no-ops are accepted, and the fields it does implement reach
the sampling parameters the workers run."""

import json

import httpx
import pytest

from runtime.engine import SamplingParams


@pytest.fixture(scope="module")
def http(frontend):
    with httpx.Client(base_url=frontend.http_url, timeout=30) as client:
        yield client


def unknown_param_error(name: str) -> dict:
    return {
        "error": {
            "message": f"Unknown parameter: '{name}'. Tandem does not implement it: "
            "remove it from the request",
            "type": "invalid_request_error",
            "param": name,
            "code": 400,
        }
    }


@pytest.mark.parametrize(
    "path,body,name",
    [
        ("/v1/completions", {"prompt": "hi", "suffix": "x"}, "suffix"),
        ("/v1/completions", {"prompt": "hi", "best_of_three": 3}, "best_of_three"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "modalities": ["audio"]},
            "modalities",
        ),
        (
            "/v1/completions",
            {"prompt": "hi", "stream": True, "stream_options": {"include_obfuscation": True}},
            "stream_options.include_obfuscation",
        ),
        # A completions-only or chat-only field sent to the other endpoint is unknown there.
        ("/v1/completions", {"prompt": "hi", "max_completion_tokens": 2}, "max_completion_tokens"),
    ],
)
def test_an_unsupported_field_returns_400_naming_it(http, frontend, path, body, name):
    before = len(frontend.dispatcher.admitted)
    r = http.post(path, json=body)
    assert r.status_code == 400 and r.json() == unknown_param_error(name)
    assert len(frontend.dispatcher.admitted) == before


def test_unknown_fields_are_named_before_type_errors_and_all_listed(http):
    r = http.post("/v1/completions", json={"prompt": 5, "foo": 1, "bar": 2})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "foo"
    assert error["message"].startswith("Unknown parameters: 'foo', 'bar'. ")


def test_self_hosting_no_op_fields_are_accepted(http, frontend):
    r = http.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 2,
            "user": "u-1",
            "metadata": {"team": "a"},
            "store": False,
            "service_tier": "auto",
            "safety_identifier": "s",
            "prompt_cache_key": "k",
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 2
    assert frontend.dispatcher.admitted[-1].params.max_tokens == 2


def test_implemented_fields_reach_the_sampling_parameters(http, frontend, tiny_preparer):
    r = http.post(
        "/v1/completions",
        json={
            "prompt": "hi",
            "max_tokens": 3,
            "stop": ["\n\n", "END"],
            "stop_token_ids": [5, 6],
            "seed": 1234,
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 20,
            "min_p": 0.05,
            "ignore_eos": True,
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
        },
    )
    assert r.status_code == 200, r.text
    assert frontend.dispatcher.admitted[-1].params == SamplingParams(
        max_tokens=3,
        stop=("\n\n", "END"),
        stop_token_ids=(5, 6),
        seed=1234,
        temperature=0.7,
        top_p=0.9,
        top_k=20,
        min_p=0.05,
        ignore_eos=True,
        include_stop_str_in_output=True,
        skip_special_tokens=False,
    )


def test_max_completion_tokens_gives_way_to_max_tokens(http, frontend):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 1}
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    assert frontend.dispatcher.admitted[-1].params.max_tokens == 1
    assert http.post("/v1/chat/completions", json={**body, "max_tokens": 2}).status_code == 200
    assert frontend.dispatcher.admitted[-1].params.max_tokens == 2


def sse_events(r: httpx.Response) -> list:
    events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_stream_options_include_usage_adds_one_last_usage_chunk(http):
    body = {"prompt": "hi", "max_tokens": 3, "stream": True}
    plain = sse_events(http.post("/v1/completions", json=body))
    assert all("usage" not in e for e in plain)
    events = sse_events(
        http.post("/v1/completions", json={**body, "stream_options": {"include_usage": True}})
    )
    assert [e.get("usage") for e in events[:-1]] == [None] * 3
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3


def test_continuous_usage_stats_puts_usage_so_far_on_every_chunk(http, tiny_preparer):
    num_prompt = len(tiny_preparer.tokenizer.encode("hi"))
    body = {
        "prompt": "hi",
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    events = sse_events(http.post("/v1/completions", json=body))
    assert [e["usage"]["completion_tokens"] for e in events] == [1, 2, 3, 3]
    assert {e["usage"]["prompt_tokens"] for e in events} == {num_prompt}
    assert all(
        e["usage"]["total_tokens"] == num_prompt + e["usage"]["completion_tokens"] for e in events
    )


def test_continuous_usage_stats_in_chat_starts_at_zero_on_the_role_chunk(http):
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    events = sse_events(http.post("/v1/chat/completions", json=body))
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [e["usage"]["completion_tokens"] for e in events] == [0, 1, 2, 2]


def test_continuous_usage_stats_without_include_usage_adds_nothing(http):
    body = {"prompt": "hi", "max_tokens": 2, "stream": True}
    body["stream_options"] = {"continuous_usage_stats": True}
    assert all("usage" not in e for e in sse_events(http.post("/v1/completions", json=body)))
