"""SmolLM2 through disaggregated serving equals transformers token for token (float32)."""

from __future__ import annotations

import pytest
from cluster_helpers import default_model_cluster_config, transformers_greedy

from runtime.client import Client
from runtime.cluster.background import BackgroundServer

pytestmark = [pytest.mark.slow, pytest.mark.model]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at"]


def test_smollm2_disaggregated_equals_transformers(default_model_dir):
    config = default_model_cluster_config(default_model_dir)
    with BackgroundServer(config) as server, Client(server.grpc_url, timeout=300) as client:
        for prompt in PROMPTS:
            out = client.generate(prompt, max_tokens=24, temperature=0.0, ignore_eos=True)
            ids = server.frontend.preparer.prompt_ids(prompt=prompt)
            assert out.token_ids == transformers_greedy(default_model_dir, ids, 24), prompt
