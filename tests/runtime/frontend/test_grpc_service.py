"""The gRPC edge: undecodable messages, values past the wire and the limits get
INVALID_ARGUMENT (an oversized message RESOURCE_EXHAUSTED), and preparing a request never
holds the event loop."""

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from fake_frontend import BlockingTokenizer, FakeFrontend

from runtime.api._proto import tandem_pb2 as pb
from runtime.client.results import build_request
from runtime.frontend.requests import RequestPreparer

GENERATE = "/tandem.v1.Tandem/Generate"


@pytest.fixture(scope="module")
def channel(frontend):
    with grpc.insecure_channel(frontend.grpc_url) as ch:
        yield ch


def generate(channel, request) -> list:
    data = request if isinstance(request, bytes) else request.SerializeToString()
    rpc = channel.unary_stream(GENERATE, response_deserializer=pb.GenerateResponse.FromString)
    return list(rpc(data, timeout=30))


def status_of(channel, request) -> tuple:
    with pytest.raises(grpc.RpcError) as info:
        generate(channel, request)
    return info.value.code(), info.value.details()


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"\x12\x03\xff\xfe\xfd", "String field had bad UTF-8"),  # prompt, bad UTF-8
        (b"\x12\x03\xed\xa0\x80", "String field had bad UTF-8"),  # prompt, a surrogate
        (b"\xff\xff\xff", "Wire format was corrupt"),
    ],
)
def test_undecodable_messages_get_invalid_argument(channel, data, reason):
    assert status_of(channel, data) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request is not a valid message of {GENERATE}: Error parsing message with type "
        f"'tandem.v1.GenerateRequest': {reason} (strings must be UTF-8)",
    )
    assert generate(channel, build_request("hi", max_tokens=1))[-1].finish_reason == pb.LENGTH


def test_a_message_past_the_limit_gets_resource_exhausted(channel):
    request = build_request("a" * (8 << 20), max_tokens=1)
    size = len(request.SerializeToString())
    assert status_of(channel, request) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"SERVER: Received message larger than max ({size} vs. 8388608)",
    )


@pytest.mark.parametrize(
    "request_kwargs,message",
    [
        (dict(stop_token_ids=[320]), "stop_token_ids must be token ids in [0, 320), got [320]"),
        (
            dict(stop_token_ids=[-1]),
            "stop_token_ids must contain only ints >= 0 and <= 4294967295, got -1 in (-1,)",
        ),
        (dict(stop=["x"] * 17), "17 stop strings: at most 16 are allowed"),
        (dict(stop=["x" * 257]), "a stop string has 257 characters: at most 256 are allowed"),
        (dict(stop_token_ids=[1] * 257), "257 stop_token_ids: at most 256 are allowed"),
        (
            dict(request_id="r" * 129),
            "request_id must be at most 128 printable characters, got 129 "
            "characters '" + "r" * 128 + "'",
        ),
        (
            dict(request_id="a\nb"),
            "request_id must be at most 128 printable characters, got 3 characters 'a\\nb'",
        ),
        (dict(max_tokens=-1), "max_tokens must be an int >= 1 and <= 4294967295, got -1"),
    ],
)
def test_out_of_range_requests_get_invalid_argument(channel, frontend, request_kwargs, message):
    request = build_request("hi", **{"max_tokens": 1, **request_kwargs})
    assert status_of(channel, request) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert frontend.dispatcher.violations == []


def test_the_prompt_character_limit_applies_to_grpc_too(channel):
    code, details = status_of(channel, build_request("a" * 897, max_tokens=1))
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "prompt has 897 characters, more than the 896 that can fit the "
        "context of 128 tokens: shorten the prompt",
    )


def test_list_models_answers_while_a_prompt_is_being_tokenized(tiny_preparer):
    tok = BlockingTokenizer(tiny_preparer.tokenizer)
    preparer = RequestPreparer(tok, "tiny", tiny_preparer.model_path, 128)
    with (
        FakeFrontend(preparer) as server,
        grpc.insecure_channel(server.grpc_url) as ch,
        ThreadPoolExecutor(1) as pool,
    ):
        try:
            slow = pool.submit(generate, ch, build_request("block", max_tokens=1))
            assert tok.entered.wait(10)
            models = ch.unary_unary(
                "/tandem.v1.Tandem/ListModels",
                response_deserializer=pb.ListModelsResponse.FromString,
            )(pb.ListModelsRequest().SerializeToString(), timeout=5)
            assert tok.inside, "the tokenizer let go before ListModels was answered"
        finally:
            tok.release.set()
        assert [m.id for m in models.models] == ["tiny"]
        assert slow.result()[-1].finish_reason == pb.LENGTH


def test_undecodable_messages_without_the_api_key_stay_unauthenticated(tiny_preparer):
    with (
        FakeFrontend(tiny_preparer, api_key="k") as server,
        grpc.insecure_channel(server.grpc_url) as ch,
    ):
        assert status_of(ch, b"\xff\xff\xff")[0] == grpc.StatusCode.UNAUTHENTICATED
        rpc = ch.unary_stream(GENERATE)
        with pytest.raises(grpc.RpcError) as info:
            list(rpc(b"\xff\xff\xff", timeout=30, metadata=(("authorization", "Bearer k"),)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
