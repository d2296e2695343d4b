"""The baseline: one colocated worker behind the same frontend gives the same tokens."""

from __future__ import annotations

import pytest
from cluster_helpers import PROMPTS, colocated_greedy, tiny_cluster_config, wait_for_free_blocks

from runtime.client import Client
from runtime.cluster.background import BackgroundServer

MAX_TOKENS = 10


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    config = tiny_cluster_config(tiny_model_dir, {"colocated": {"replicas": 1, "num_cpus": 1}})
    with BackgroundServer(config) as server:
        yield server


def test_colocated_serving_equals_the_engine_and_cancel_frees_blocks(server, tiny_model_dir):
    with Client(server.grpc_url, timeout=60) as client:
        outs = [
            client.generate(p, max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
            for p in PROMPTS
        ]
        assert [o.token_ids for o in outs] == colocated_greedy(tiny_model_dir, PROMPTS, MAX_TOKENS)
        t = outs[0].timings
        assert t.prefill_worker == t.decode_worker == "colocated-0"
        assert t.kv_transfer_bytes == 0 and t.decode_s > 0
        assert client.cluster_status().mode == "colocated"
        for chunk in client.stream("Hello", max_tokens=400, temperature=0.0, ignore_eos=True):
            break
    assert wait_for_free_blocks(server) == {"colocated-0": 256}
