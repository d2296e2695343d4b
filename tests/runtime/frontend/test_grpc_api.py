"""The gRPC Tokenize / Detokenize / GetVersion and continuous usage on Generate, through the
SDK (sync and async) against the real gRPC server over a fake dispatcher."""

import asyncio

import grpc
import pytest

from runtime.client import AsyncClient, Client, InvalidArgumentError, Tokenized
from runtime.frontend.tokenization import server_version

CHAT = [{"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def client(frontend):
    with Client(frontend.grpc_url, timeout=30) as c:
        yield c


def test_tokenize_matches_the_tokenizer_and_what_generate_runs(client, frontend, tiny_preparer):
    tok = tiny_preparer.tokenizer
    want = tok.encode("The quick brown fox")
    assert client.tokenize("The quick brown fox", return_token_strs=True) == Tokenized(
        want, 128, tok.convert_ids_to_tokens(want)
    )
    chat = client.tokenize(messages=CHAT)
    client.chat(CHAT, max_tokens=1)
    assert chat.token_strs is None
    assert chat.token_ids == list(frontend.dispatcher.admitted[-1].prompt_token_ids)
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert chat.token_ids == tok.encode(text, add_special_tokens=False)


def test_detokenize_and_version(client, tiny_preparer):
    ids = tiny_preparer.tokenizer.encode("Paged attention keeps")
    assert client.detokenize(ids) == tiny_preparer.tokenizer.decode(ids)
    v = client.version()
    assert (v.version, v.api, v.kv_contract_version) == tuple(server_version().values())


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda c: c.tokenize(), "give exactly one of prompt or messages"),
        (lambda c: c.tokenize("a", model="gpt-4"), "unknown model 'gpt-4'"),
        (lambda c: c.detokenize([1, 10**6]), "tokens must be ids in [0, "),
    ],
)
def test_bad_tokenizer_calls_get_invalid_argument(client, call, message):
    with pytest.raises(InvalidArgumentError) as info:
        call(client)
    assert message in info.value.details


def test_continuous_usage_stats_puts_usage_on_every_chunk(client, tiny_preparer):
    n = len(tiny_preparer.tokenizer.encode("hi"))
    chunks = list(client.stream("hi", max_tokens=3, continuous_usage_stats=True))
    assert [(c.usage.prompt_tokens, c.usage.completion_tokens) for c in chunks] == [
        (n, 1),
        (n, 2),
        (n, 3),
    ]
    plain = list(client.stream("hi", max_tokens=3))
    assert [c.usage is None for c in plain] == [True, True, False]


def test_the_async_client_has_the_same_calls(frontend, tiny_preparer):
    async def run():
        async with AsyncClient(frontend.grpc_url, timeout=30) as c:
            got = await c.tokenize("hello")
            text = await c.detokenize(got.token_ids)
            version = await c.version()
            usage = [
                x.usage async for x in c.stream("hi", max_tokens=2, continuous_usage_stats=True)
            ]
            return got, text, version, usage

    got, text, version, usage = asyncio.run(run())
    assert got.token_ids == tiny_preparer.tokenizer.encode("hello") and "hello" in text
    assert version.api == "tandem.v1"
    assert [u.completion_tokens for u in usage] == [1, 2]


def test_fields_this_server_does_not_implement_get_invalid_argument(frontend):
    # A client built against a newer contract: GenerateRequest field 19 and SamplingParams
    # field 21 (varints) are unknown here and must be refused, not dropped.
    from runtime.api._proto import tandem_pb2 as pb

    params = pb.SamplingParams(max_tokens=2).SerializeToString() + bytes([0xA8, 0x01, 0x05])
    request = pb.GenerateRequest(prompt="hi")
    request.params.MergeFromString(params)
    raw = request.SerializeToString() + bytes([0x98, 0x01, 0x01])
    with grpc.insecure_channel(frontend.grpc_url) as channel:
        generate = channel.unary_stream(
            "/tandem.v1.Tandem/Generate", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as info:
            list(generate(raw, timeout=30))
        tokenize = channel.unary_unary(
            "/tandem.v1.Tandem/Tokenize", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as tok_info:
            tokenize(pb.TokenizeRequest(prompt="a").SerializeToString() + b"\x28\x01", timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        "GenerateRequest has fields this server does not implement (by field number): "
        "#19, params.#21; upgrade the server or leave them unset"
    )
    assert tok_info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "TokenizeRequest has fields" in tok_info.value.details()


def test_unknown_fields_are_found_inside_repeated_messages():
    from runtime.api._proto import tandem_pb2 as pb
    from runtime.frontend.grpc_api import unknown_fields_of

    message = pb.ChatMessage.FromString(
        pb.ChatMessage(role="user", content="x").SerializeToString() + b"\x28\x01"
    )
    request = pb.GenerateRequest()
    request.chat.messages.extend([pb.ChatMessage(role="system", content="y"), message])
    assert unknown_fields_of(request) == ["chat.messages[1].#5"]
    assert unknown_fields_of(pb.GenerateRequest(prompt="hi")) == []
