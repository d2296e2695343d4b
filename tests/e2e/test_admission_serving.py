"""Admission on a live cluster: once the prefill worker has measured its rate, a request
predicted to miss the TTFT target is refused at once (gRPC RESOURCE_EXHAUSTED with a
retry-after trailer, HTTP 429 with Retry-After and an OpenAI error object) without reaching
a worker, and counted in the metrics."""

from __future__ import annotations

import time

import httpx
import pytest
import ray
from cluster_helpers import tiny_cluster_config
from prometheus_text import samples, value

from runtime.client import Client, ResourceExhaustedError, RetryPolicy
from runtime.cluster.background import BackgroundServer
from scheduler import SchedulerConfig

PROMPT = [10 + i % 300 for i in range(300)]  # 300 token ids (the tiny vocabulary has 320)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    config = tiny_cluster_config(
        tiny_model_dir,
        {"prefill": {"replicas": 1, "num_cpus": 1}, "decode": {"replicas": 1, "num_cpus": 1}},
        # No prompt computes in a microsecond: once a rate is measured, all are refused.
        scheduler={"ttft_slo_s": 1e-6},
    )
    with BackgroundServer(config) as server:
        yield server


def prefill_worker(server):
    (worker,) = [w for w in server.workers if w.role == "prefill"]
    return worker


def test_requests_predicted_to_miss_the_slo_are_refused_before_any_worker(server):
    worker = prefill_worker(server)
    with Client(server.grpc_url, timeout=60, retry=RetryPolicy(max_attempts=1)) as client:
        # Nothing measured yet: admitted (there is no prediction to refuse on).
        first = client.generate(prompt_token_ids=PROMPT, max_tokens=2, ignore_eos=True)
        assert len(first.token_ids) == 2
        end = time.monotonic() + 10
        router = server.frontend.dispatcher.router
        while not [w for w in router.loads() if w.role == "prefill"][0].prefill_tokens_per_s:
            assert time.monotonic() < end, "the prefill rate never reached the router"
            time.sleep(0.05)
        assert ray.get(worker.actor.load.remote()).prefill_tokens_per_s > 0
        prefilled = ray.get(worker.actor.counters.remote())["prefilled"]

        with pytest.raises(ResourceExhaustedError) as info:
            client.generate(prompt_token_ids=PROMPT, max_tokens=2)
        assert "the first token is predicted in" in info.value.details
        assert info.value.retry_after_s is not None and info.value.retry_after_s >= 1

    r = httpx.post(
        f"{server.http_url}/v1/completions",
        json={"model": server.config.model_name, "prompt": PROMPT, "max_tokens": 2},
        timeout=30,
    )
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    error = r.json()["error"]
    assert "predicted" in error["message"] and error["type"]
    assert ray.get(worker.actor.counters.remote())["prefilled"] == prefilled  # untouched

    metrics = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    assert value(samples(metrics), "tandem:admission_refusals_total", reason="ttft") == 2


def test_a_looser_slo_admits_the_same_request(server):
    router = server.frontend.dispatcher.router
    strict = router.config
    router.config = SchedulerConfig(ttft_slo_s=600)
    observed = router.num_ttft_observations("prefill")
    try:
        with Client(server.grpc_url, timeout=60) as client:
            for _ in range(3):
                out = client.generate(prompt_token_ids=PROMPT, max_tokens=2, ignore_eos=True)
                assert len(out.token_ids) == 2
        # Each admitted request's first token taught admission's margin once.
        assert router.num_ttft_observations("prefill") == observed + 3
    finally:
        router.config = strict
