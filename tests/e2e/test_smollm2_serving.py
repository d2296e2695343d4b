"""SmolLM2 through disaggregated serving equals transformers token for token (float32)."""

from __future__ import annotations

import pytest
from cluster_helpers import transformers_greedy

from runtime.client import Client
from runtime.cluster import parse_cluster_config
from runtime.cluster.background import BackgroundServer

pytestmark = [pytest.mark.slow, pytest.mark.model]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at"]


def test_smollm2_disaggregated_equals_transformers(default_model_dir):
    config = parse_cluster_config(
        {
            "model": {"path": str(default_model_dir), "max_model_len": 512},
            "engine": {"memory_gib": 0.1, "num_threads": 1},
            "pools": {"prefill": {"replicas": 1}, "decode": {"replicas": 1}},
            "server": {"grpc_port": 0, "http_port": 0},
            "ray": {"num_cpus": 4},
        }
    )
    with BackgroundServer(config) as server, Client(server.grpc_url, timeout=300) as client:
        for prompt in PROMPTS:
            out = client.generate(prompt, max_tokens=24, temperature=0.0, ignore_eos=True)
            ids = server.frontend.preparer.prompt_ids(prompt=prompt)
            assert out.token_ids == transformers_greedy(default_model_dir, ids, 24), prompt
