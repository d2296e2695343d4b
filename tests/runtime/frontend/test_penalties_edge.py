"""Penalties, logit_bias and min_tokens at the HTTP and gRPC edges: they reach the workers as
sent (string token ids become ints), and out-of-range values get 400 / INVALID_ARGUMENT
saying what to fix."""

import grpc
import httpx
import pytest

from runtime.api._proto import tandem_pb2 as pb
from runtime.client.results import build_request

PENALTIES = {
    "presence_penalty": 0.5,
    "frequency_penalty": -1,
    "repetition_penalty": 1.2,
    "logit_bias": {"7": 100, "42": -100.0},
    "min_tokens": 2,
}


@pytest.fixture(scope="module")
def http(frontend):
    with httpx.Client(base_url=frontend.http_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def channel(frontend):
    with grpc.insecure_channel(frontend.grpc_url) as ch:
        yield ch


def admitted_params(frontend):
    return frontend.dispatcher.admitted[-1].params


def assert_penalties(p):
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.5, -1.0, 1.2)
    assert p.logit_bias == ((7, 100.0), (42, -100.0)) and p.min_tokens == 2


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/completions", {"prompt": "hi"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ],
)
def test_http_fields_reach_the_workers(http, frontend, path, body):
    r = http.post(path, json={**body, "max_tokens": 3, **PENALTIES})
    assert r.status_code == 200, r.text
    assert_penalties(admitted_params(frontend))
    assert frontend.dispatcher.violations == []


def test_grpc_and_sdk_fields_reach_the_workers(channel, frontend):
    sdk = {**PENALTIES, "logit_bias": {7: 100, "42": -100.0}}  # int or OpenAI-style keys
    request = build_request("hi", max_tokens=3, **sdk)
    assert dict(request.params.logit_bias) == {7: 100.0, 42: -100.0}
    rpc = channel.unary_stream(
        "/tandem.v1.Tandem/Generate", response_deserializer=pb.GenerateResponse.FromString
    )
    assert list(rpc(request.SerializeToString(), timeout=30))[-1].finish_reason == pb.LENGTH
    assert_penalties(admitted_params(frontend))
    unset = build_request("hi", max_tokens=1)
    list(rpc(unset.SerializeToString(), timeout=30))
    assert not admitted_params(frontend).has_penalties


BAD = [
    ({"presence_penalty": 2.5}, "presence_penalty must be a number in [-2.0, 2.0], got 2.5"),
    ({"frequency_penalty": -3}, "frequency_penalty must be a number in [-2.0, 2.0], got -3.0"),
    (
        {"repetition_penalty": 0},
        "repetition_penalty must be a finite number > 0 (1 is off), got 0.0",
    ),
    (
        {"min_tokens": 5, "max_tokens": 4},
        "min_tokens must be an int >= 0 and <= max_tokens (4), got 5",
    ),
    ({"min_tokens": -1}, "min_tokens must be an int >= 0 and <= max_tokens (4), got -1"),
    (
        {"logit_bias": {"7": 101}},
        "logit_bias values must be numbers in [-100.0, 100.0], got 101.0 for token 7",
    ),
    ({"logit_bias": {"320": 1}}, "logit_bias keys must be token ids in [0, 320), got [320]"),
    (
        {"logit_bias": {str(i): 1 for i in range(301)}},
        "logit_bias has 301 entries: at most 300 are allowed",
    ),
]
HTTP_ONLY = [
    (
        {"logit_bias": {"abc": 1}},
        "logit_bias keys must be token ids written as decimal strings, like \"50256\", got 'abc'",
    ),
    (
        {"logit_bias": {"-1": 1}},
        "logit_bias keys must be token ids written as decimal strings, like \"50256\", got '-1'",
    ),
    ({"logit_bias": {"1": "x"}}, "logit_bias.1: Input should be a valid number"),
    ({"presence_penalty": "1"}, "presence_penalty: Input should be a valid number"),
]


@pytest.mark.parametrize("fields,message", BAD + HTTP_ONLY)
def test_http_out_of_range_gets_400(http, frontend, fields, message):
    for path, body in [
        ("/v1/completions", {"prompt": "hi"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ]:
        r = http.post(path, json={**body, "max_tokens": 4, **fields})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["message"] == message
    assert frontend.dispatcher.violations == []


@pytest.mark.parametrize(
    "fields,message",
    BAD
    + [
        (
            {"logit_bias": {-1: 1}},
            "logit_bias keys must be token ids (ints >= 0 and <= 4294967295), got -1",
        )
    ],
)
def test_grpc_out_of_range_gets_invalid_argument(channel, frontend, fields, message):
    rpc = channel.unary_stream(
        "/tandem.v1.Tandem/Generate", response_deserializer=pb.GenerateResponse.FromString
    )
    request = build_request("hi", **{"max_tokens": 4, **fields})
    with pytest.raises(grpc.RpcError) as info:
        list(rpc(request.SerializeToString(), timeout=30))
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert frontend.dispatcher.violations == []
