"""The pool balancer on a live cluster: a decode worker flipped to prefill finishes the
request it holds first (nothing is cut off or recomputed), is replaced by a prefill worker
that serves correct tokens, and the action shows in ClusterStatus and the metrics."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from cluster_helpers import colocated_greedy, tiny_cluster_config

from runtime.client import Client
from runtime.cluster.background import BackgroundServer
from scheduler.balancer import Action

PROMPTS = [[20 + i] + list(range(60, 90)) for i in range(2)]
MAX_TOKENS = 60


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    config = tiny_cluster_config(
        tiny_model_dir,
        {
            # Half a CPU each: the chaos tests' session-wide cluster may hold 2 of the
            # shared Ray's 4 CPUs while this module runs.
            "prefill": {"replicas": 1, "num_cpus": 0.5},
            "decode": {"replicas": 2, "num_cpus": 0.5, "min_replicas": 1},
        },
        # The balancer's own loop never acts here (a day between decisions): the test
        # hands it the action, so what is checked is how it is carried out.
        scheduler={
            "ttft_slo_s": 600,
            "tpot_slo_s": 600,
            "balancer": {"enabled": True, "interval_s": 86400},
        },
    )
    with BackgroundServer(config) as server:
        yield server


def test_a_flip_drains_the_decode_worker_then_serves_as_prefill(server, tiny_model_dir):
    reference = colocated_greedy(tiny_model_dir, PROMPTS, MAX_TOKENS)
    flip = Action(time.monotonic(), "flip", "prefill", "the test asked", source="decode")
    with Client(server.grpc_url, timeout=120) as client:

        def run(prompt):
            return client.generate(
                prompt_token_ids=prompt, max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True
            )

        with ThreadPoolExecutor(2) as pool:
            outs = [pool.submit(run, p) for p in PROMPTS]
            end = time.monotonic() + 30  # both decode workers hold one request
            while server.frontend.dispatcher.num_in_flight < 2 and time.monotonic() < end:
                time.sleep(0.01)
            balancer = server.balancer
            balancer.policy.decide = lambda *pools: flip  # what the policy would decide
            done = server.run(balancer.step(), timeout=300).outcome
            results = [f.result() for f in outs]
        assert [r.token_ids for r in results] == reference  # nothing cut off by the flip
        old, new = done.split(" -> ")
        assert old.startswith("decode-") and new.startswith("prefill-")
        roles = sorted(w.role for w in server.workers)
        assert roles == ["decode", "prefill", "prefill"]
        assert (
            new in {w.name for w in server.workers}
            and old not in server.frontend.dispatcher.workers
        )

        # The new prefill worker serves: enough requests that both prefill workers take some.
        with ThreadPoolExecutor(4) as pool:
            again = list(pool.map(run, PROMPTS * 3))
        assert [r.token_ids for r in again] == reference * 3
        used = {r.timings.prefill_worker for r in again}
        assert new in used

    with Client(server.grpc_url) as client:
        status = client.cluster_status()
    assert [(a.kind, a.source, a.outcome) for a in status.balancer_actions] == [
        ("flip", "decode", done)
    ]
    assert sorted(w.role for w in status.workers) == ["decode", "prefill", "prefill"]
    metrics = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    assert 'tandem_balancer_actions_total{kind="flip",outcome="done",role="prefill"} 1.0' in metrics
