"""Whole-cluster fixtures: ONE real local Ray cluster per test module (Ray start-up is slow)."""

from __future__ import annotations

import pytest
from cluster_helpers import tiny_cluster_config

from runtime.cluster.background import BackgroundServer


@pytest.fixture(scope="module")
def disaggregated_server(tiny_model_dir):
    config = tiny_cluster_config(
        tiny_model_dir,
        {"prefill": {"replicas": 1, "num_cpus": 1}, "decode": {"replicas": 1, "num_cpus": 1}},
    )
    with BackgroundServer(config) as server:
        yield server
