"""Issue 15's must-show: scraping /metrics after a known set of requests (gRPC and HTTP,
streamed and not, one whose KV handoff is corrupted once and retried, one refused as bad
input) gives exact request and token counts, and every histogram has samples."""

from __future__ import annotations

import json

import httpx
import pytest
import ray
from cluster_helpers import NUM_BLOCKS, wait_for_free_blocks
from prometheus_text import samples, value

from runtime.client import Client
from runtime.faults import FaultConfig
from runtime.frontend.metric_specs import METRICS

SHARED = [10 + i for i in range(21)]  # sent twice: the second hits the prefix cache
HTTP_PROMPT = list(range(50, 63))  # likewise, over HTTP
CORRUPTED = list(range(100, 130))  # its first handoff's first chunk is corrupted


@pytest.fixture(scope="module")
def server(disaggregated_server):
    return disaggregated_server


def http_usage(u: dict) -> tuple[int, int, int]:
    return u["prompt_tokens"], u["completion_tokens"], u["prompt_tokens_details"]["cached_tokens"]


def send_known_requests(server) -> list[tuple[int, int, int]]:
    """(prompt tokens, completion tokens, cached prompt tokens) of each request as its
    client was told."""
    (prefill,) = [w for w in server.workers if w.role == "prefill"]
    usages = []
    with Client(server.grpc_url, timeout=60) as client:
        u = client.generate(prompt_token_ids=SHARED, max_tokens=5, ignore_eos=True).usage
        usages.append(u)
        chunks = list(client.stream(prompt_token_ids=SHARED, max_tokens=4, ignore_eos=True))
        usages.append(chunks[-1].usage)
        ray.get(prefill.actor.set_faults.remote(FaultConfig(kv_corrupt_chunk=True)))
        try:
            done = client.generate(prompt_token_ids=CORRUPTED, max_tokens=3, ignore_eos=True)
        finally:
            ray.get(prefill.actor.set_faults.remote(FaultConfig()))
        assert len(done.token_ids) == 3  # retried on the pair once
        usages.append(done.usage)
    usages = [(u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens) for u in usages]
    url, model = f"{server.http_url}/v1/completions", server.config.model_name
    body = {"model": model, "prompt": HTTP_PROMPT, "max_tokens": 3, "ignore_eos": True}
    r = httpx.post(url, json=body, timeout=60)
    assert r.status_code == 200, r.text
    usages.append(http_usage(r.json()["usage"]))
    stream = {**body, "max_tokens": 1, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url, json=stream, timeout=60) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usages.append(http_usage(json.loads(events[-2])["usage"]))
    bad = httpx.post(url, json={**body, "temperature": -1}, timeout=60)
    assert bad.status_code == 400
    return usages


def test_a_scrape_after_known_requests_counts_them_exactly(server):
    usages = send_known_requests(server)
    assert [(p, c) for p, c, _ in usages] == [(21, 5), (21, 4), (30, 3), (13, 3), (13, 1)]
    assert usages[1][2] > 0 and usages[4][2] > 0  # the repeats hit the prefix cache
    assert all(n == NUM_BLOCKS for n in wait_for_free_blocks(server).values())
    scraped = samples(httpx.get(f"{server.http_url}/metrics", timeout=10).text)

    def v(name, **labels):
        return value(scraped, name, **labels)

    assert {dict(ls)["model_name"] for _, ls in scraped} == {server.config.model_name}
    assert v("tandem:request_success_total", finished_reason="length") == 5
    assert v("tandem:request_success_total") == 5
    assert v("tandem:request_errors_total", code="INVALID_ARGUMENT") == 1
    assert v("tandem:prompt_tokens_total") == sum(p for p, _, _ in usages) == 98
    assert v("tandem:generation_tokens_total") == sum(c for _, c, _ in usages) == 16
    for name in ("time_to_first_token", "e2e_request_latency", "request_queue_time"):
        assert v(f"tandem:{name}_seconds_count") == 5, name
    assert v("tandem:request_prefill_time_seconds_count") == 5
    # Requests of 2+ tokens: a TPOT, a decode stage and a KV handoff each.
    for name in ("time_per_output_token", "request_decode_time", "kv_transfer_time"):
        assert v(f"tandem:{name}_seconds_count") == 4, name
    # One per token but each request's first.
    assert v("tandem:inter_token_latency_seconds_count") == sum(c - 1 for _, c, _ in usages)
    assert v("tandem:inter_token_latency_seconds_sum") > 0
    assert v("tandem:kv_transfer_bytes_total") > 0
    for m in METRICS:
        if m.kind == "histogram":
            assert v(f"{m.name}_count") > 0, m.name

    # The workers' own totals: the prefill worker looked up every prompt once, and the
    # corrupted request's again with its first token (its retry); decode workers none.
    prefill = {"worker": "prefill-0", "pool": "prefill"}
    assert v("tandem:prefix_cache_queries_total", **prefill) == 98 + 31
    assert v("tandem:prefix_cache_queries_total", pool="decode") == 0
    hits = v("tandem:prefix_cache_hits_total", **prefill)
    assert hits == sum(cached for _, _, cached in usages) > 0
    assert v("tandem:kv_handoff_failures_total", **prefill, code="DATA_LOSS") == 1
    assert v("tandem:kv_handoff_failures_total") == 1
    assert v("tandem:num_preemptions_total") == 0

    # Nothing in flight once every request ended.
    assert v("tandem:num_requests_in_flight") == 0
    assert v("tandem:num_requests_running") == v("tandem:num_requests_waiting") == 0
    assert v("tandem:kv_cache_usage_perc", worker="prefill-0") == 0
    assert v("tandem:kv_cache_usage_perc", worker="decode-0") == 0
    assert v("tandem:pool_size", pool="prefill") == v("tandem:pool_size", pool="decode") == 1
