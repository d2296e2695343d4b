"""A decode worker without free KV blocks makes handoffs wait instead of failing them: every
request completes with the reference tokens once blocks free up, and no prompt is
prefilled twice."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray
from cluster_helpers import NUM_BLOCKS, colocated_greedy, tiny_cluster_config

from runtime.client import Client
from runtime.cluster.background import BackgroundServer

DECODE_BLOCKS = 24  # blocks of 4 tokens: one request of ~40 + 40 tokens at a time
MAX_TOKENS = 40
PROMPTS = [[10 + i] + list(range(50, 90)) for i in range(4)]  # 41 token ids each


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    config = tiny_cluster_config(
        tiny_model_dir,
        {
            "prefill": {"replicas": 1, "num_cpus": 1},
            "decode": {"replicas": 1, "num_cpus": 1, "engine": {"num_blocks": DECODE_BLOCKS}},
        },
    )
    with BackgroundServer(config) as server:
        yield server


def counters(server, role: str) -> dict:
    (worker,) = [w for w in server.workers if w.role == role]
    return ray.get(worker.actor.counters.remote())


def free_blocks(server, want: dict, timeout: float = 15.0) -> dict:
    end = time.monotonic() + timeout
    while True:
        free = {w.role: ray.get(w.actor.num_free_blocks.remote()) for w in server.workers}
        if free == want or time.monotonic() > end:
            return free
        time.sleep(0.05)


def test_a_full_decode_side_delays_handoffs_and_fails_none(server, tiny_model_dir):
    reference = colocated_greedy(tiny_model_dir, PROMPTS, MAX_TOKENS)
    with Client(server.grpc_url, timeout=120) as client:
        before = counters(server, "prefill")["prefilled"]

        def run(prompt):
            return client.generate(
                prompt_token_ids=prompt, max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True
            )

        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            outs = list(pool.map(run, PROMPTS))
    assert [o.token_ids for o in outs] == reference
    assert counters(server, "prefill")["prefilled"] - before == len(PROMPTS)  # none twice
    assert counters(server, "decode")["handoffs_waited_for_blocks"] >= 1
    want = {"prefill": NUM_BLOCKS, "decode": DECODE_BLOCKS}
    assert free_blocks(server, want) == want
