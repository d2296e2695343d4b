"""1 prefill + 1 decode worker on a real local Ray: the SDK, the OpenAI client, health,
cancellation and bad requests, against the colocated engine and transformers."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from cluster_helpers import PROMPTS, colocated_greedy, transformers_greedy, wait_for_free_blocks
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_text import names, samples, value

from runtime.client import AsyncClient, Client, InvalidArgumentError

MAX_TOKENS = 12
GREEDY = dict(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def server(disaggregated_server):
    return disaggregated_server


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return colocated_greedy(tiny_model_dir, PROMPTS, MAX_TOKENS)


@pytest.fixture(scope="module")
def client(server):
    with Client(server.grpc_url, timeout=60) as c:
        yield c


def test_greedy_equals_colocated_engine_and_transformers(client, server, reference, tiny_model_dir):
    outs = [client.generate(p, **GREEDY) for p in PROMPTS]
    assert [o.token_ids for o in outs] == reference
    prompt_ids = server.frontend.preparer.prompt_ids(prompt=PROMPTS[0])
    assert outs[0].token_ids == transformers_greedy(tiny_model_dir, prompt_ids, MAX_TOKENS)
    t = outs[3].timings
    assert outs[3].finish_reason == "length" and outs[3].usage.completion_tokens == MAX_TOKENS
    assert (t.prefill_worker, t.decode_worker) == ("prefill-0", "decode-0")
    assert t.kv_transfer_bytes > 0 and t.kv_transfer_s > 0 and t.prefill_s > 0
    assert 0 < t.ttft_s <= t.e2e_s


def test_sixteen_concurrent_streams_all_complete(server, reference):
    async def one(client, i):
        ids, text, last = [], [], None
        async for chunk in client.stream(PROMPTS[i % len(PROMPTS)], **GREEDY):
            ids += chunk.token_ids
            text.append(chunk.text)
            last = chunk
        return ids, last

    async def run():
        async with AsyncClient(server.grpc_url, timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(16)))

    results = asyncio.run(run())
    assert [ids for ids, _ in results] == [reference[i % len(PROMPTS)] for i in range(16)]
    assert all(last.finish_reason == "length" for _, last in results)
    assert set(wait_for_free_blocks(server).values()) == {256}


def test_health_reports_serving(server, client):
    assert client.health() == "SERVING"
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service="tandem.v1.Tandem"), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_client_cancel_frees_the_decode_workers_blocks(server, client):
    stream = client.stream("The quick brown fox", max_tokens=400, temperature=0.0, ignore_eos=True)
    got = 0
    for chunk in stream:
        got += len(chunk.token_ids)
        if got >= 3:  # the request is decoding on the decode worker now
            break
    stream.close()  # cancels the call
    free = wait_for_free_blocks(server)
    assert free == {"prefill-0": 256, "decode-0": 256}
    status = client.cluster_status()
    assert status.num_requests_in_flight == 0


@pytest.mark.parametrize(
    "kwargs,fix",
    [
        (dict(prompt=""), "prompt is empty"),
        (dict(prompt="hi", model="no-such-model"), "unknown model 'no-such-model'"),
        (dict(prompt="hi", max_tokens=0), "max_tokens must be an int >= 1"),
        (dict(prompt="hi", max_tokens=10_000), "set max_tokens <= "),
        (dict(prompt="hi", temperature=-0.5), "temperature must be >= 0"),
        (dict(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role must be one of"),
        (dict(messages=[]), "messages must be a non-empty list"),
        (dict(prompt_token_ids=[10**6]), "prompt token ids must be ints in"),
    ],
)
def test_bad_requests_get_invalid_argument_and_the_server_keeps_serving(client, kwargs, fix):
    with pytest.raises(InvalidArgumentError) as info:
        client.generate(**kwargs)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fix in info.value.details
    assert client.generate("Hello", max_tokens=2, temperature=0.0).usage.completion_tokens >= 1


def test_list_models_and_cluster_status(client, tiny_model_dir):
    [model] = client.list_models()
    assert model.id == str(tiny_model_dir) and model.max_model_len == 512
    status = client.cluster_status()
    assert status.mode == "disaggregated"
    assert sorted((w.name, w.role, w.healthy) for w in status.workers) == [
        ("decode-0", "decode", True),
        ("prefill-0", "prefill", True),
    ]
    assert [
        w.kv_address.startswith("127.0.0.1:") for w in status.workers if w.role == "decode"
    ] == [True]


def test_openai_client_streaming_and_not(server, client, tiny_model_dir):
    import openai

    oai = openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="unused", max_retries=0)
    name = str(tiny_model_dir)
    assert [m.id for m in oai.models.list().data] == [name]
    extra = {"ignore_eos": True, "top_k": 0, "min_p": 0.0}
    full = oai.completions.create(
        model=name, prompt=PROMPTS[1], max_tokens=MAX_TOKENS, temperature=0, extra_body=extra
    )
    assert full.usage.completion_tokens == MAX_TOKENS and full.choices[0].finish_reason == "length"
    parts = list(
        oai.completions.create(
            model=name,
            prompt=PROMPTS[1],
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            extra_body=extra,
        )
    )
    assert "".join(p.choices[0].text for p in parts) == full.choices[0].text
    assert full.choices[0].text == client.generate(PROMPTS[1], **GREEDY).text

    messages = [{"role": "user", "content": "Hello world!"}]
    chat = oai.chat.completions.create(
        model=name, messages=messages, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )
    chunks = list(
        oai.chat.completions.create(
            model=name,
            messages=messages,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 8 == chat.usage.completion_tokens

    with pytest.raises(openai.BadRequestError, match="temperature must be >= 0"):
        oai.completions.create(model=name, prompt="hi", max_tokens=4, temperature=-1)
    with pytest.raises(openai.BadRequestError, match="messages"):
        oai.chat.completions.create(model=name, messages=[{"content": "no role"}], max_tokens=4)


def test_metrics_and_health_over_http(server):
    import httpx

    assert httpx.get(f"{server.http_url}/health").status_code == 200
    scraped = samples(httpx.get(f"{server.http_url}/metrics").text)
    for name in (
        "tandem:time_to_first_token_seconds_count",
        "tandem:time_per_output_token_seconds_count",
        "tandem:kv_transfer_time_seconds_count",
        "tandem:kv_transfer_bytes_total",
    ):
        assert name in names(scraped), name
    assert value(scraped, "tandem:pool_size", pool="decode") == 1
    assert ("tandem:num_free_kv_blocks", "prefill-0") in {
        (n, dict(ls).get("worker")) for n, ls in scraped
    }
