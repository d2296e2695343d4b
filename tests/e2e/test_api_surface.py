"""The API surface on a real cluster (tiny model, 1 prefill + 1 decode): a non-streaming
HTTP request whose client disconnects is aborted on the workers, which free its KV blocks;
X-Request-Id; /tokenize and the SDK's tokenize agree with what Generate runs; readiness."""

from __future__ import annotations

import httpx
import pytest
import ray
from cluster_helpers import PROMPTS, colocated_greedy, wait_for_free_blocks
from transformers import AutoTokenizer

from runtime.client import Client
from runtime.faults import FaultConfig


@pytest.fixture(scope="module")
def server(disaggregated_server):
    return disaggregated_server


def set_faults(server, faults: FaultConfig) -> None:
    ray.get([w.actor.set_faults.remote(faults) for w in server.workers])


def finished_requests(server) -> float:
    return sum(
        s.value
        for metric in server.frontend.metrics.registry.collect()
        for s in metric.samples
        if s.name == "tandem:request_success_total"
    )


def test_a_non_streaming_request_whose_client_disconnects_frees_its_blocks(server):
    # The KV handoff is slowed to seconds (an injected fault), so the client gives up while
    # the request holds blocks on both workers, however fast the tiny model decodes.
    set_faults(server, FaultConfig(kv_delay_s=3.0))
    before = finished_requests(server)
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{server.http_url}/v1/completions",
                json={"prompt": PROMPTS[3], "max_tokens": 50, "ignore_eos": True},
                timeout=httpx.Timeout(30, read=1.5),
            )
        free = wait_for_free_blocks(server, timeout=30)
    finally:
        set_faults(server, FaultConfig())
    assert free == {"prefill-0": 256, "decode-0": 256}
    with Client(server.grpc_url, timeout=30) as client:
        assert client.cluster_status().num_requests_in_flight == 0
    assert finished_requests(server) == before, "it ran to the end instead of being aborted"


def test_x_request_id_and_tokenize_on_a_real_cluster(server, tiny_model_dir):
    [want] = colocated_greedy(tiny_model_dir, [PROMPTS[2]], 4)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    r = httpx.post(
        f"{server.http_url}/v1/completions",
        json={"prompt": PROMPTS[2], "max_tokens": 4, "temperature": 0, "ignore_eos": True},
        headers={"X-Request-Id": "e2e-1"},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "e2e-1"
    assert r.json()["id"] == "cmpl-e2e-1"
    tokens = httpx.post(f"{server.http_url}/tokenize", json={"prompt": PROMPTS[2]}).json()
    with Client(server.grpc_url, timeout=60) as client:
        got = client.generate(PROMPTS[2], max_tokens=4, temperature=0.0, ignore_eos=True)
        assert got.token_ids == want
        assert client.tokenize(PROMPTS[2]).token_ids == tokens["tokens"]
        assert got.usage.prompt_tokens == tokens["count"]
        assert client.detokenize(want) == tokenizer.decode(want)
    assert tokens["max_model_len"] == 512
    for path in ("/health", "/ready", "/live"):
        assert httpx.get(f"{server.http_url}{path}").status_code == 200


def test_seed_and_stop_over_http_on_a_real_cluster(server):
    def complete(**fields) -> dict:
        body = {"prompt": PROMPTS[1], "max_tokens": 12, "ignore_eos": True, **fields}
        r = httpx.post(f"{server.http_url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]

    sampled = [complete(temperature=1.0, seed=7)["text"] for _ in range(2)]
    assert sampled[0] == sampled[1]  # the same seed samples the same tokens
    greedy = complete(temperature=0)["text"]
    stop = greedy[len(greedy) // 2 :][:2]
    cut = complete(temperature=0, stop=[stop])
    assert cut["finish_reason"] == "stop" and cut["text"] == greedy[: greedy.index(stop)]
