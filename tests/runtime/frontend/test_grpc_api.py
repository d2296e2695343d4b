"""The gRPC Tokenize / Detokenize / GetVersion and continuous usage on Generate, through the
SDK (sync and async) against the real gRPC server over a fake dispatcher."""

import asyncio

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
