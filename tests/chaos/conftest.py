"""Chaos tests: faults injected into a real local cluster (Ray, 1 prefill + 1 decode).

One cluster serves the whole session (Ray start-up is slow); each test leaves it serving
with every worker's KV blocks back at their baseline, which the next test relies on. Each
fault's outcome is recorded with `record_outcome` and shown as a table at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))

from chaos_helpers import MAX_TOKENS, OUTCOMES, PROMPTS  # noqa: E402
from cluster_helpers import colocated_greedy, tiny_cluster_config  # noqa: E402

from runtime.cluster.background import BackgroundServer  # noqa: E402


@pytest.fixture(scope="session")
def chaos_server(tiny_model_dir):
    config = tiny_cluster_config(
        tiny_model_dir,
        {"prefill": {"replicas": 1, "num_cpus": 1}, "decode": {"replicas": 1, "num_cpus": 1}},
        server={"grpc_port": 0, "http_port": 0, "recovery_timeout_s": 40},
        kv_transfer={"layerwise_min_tokens": 16, "deadline_s": 3},
    )
    with BackgroundServer(config) as server:
        yield server


@pytest.fixture(scope="session")
def chaos_reference(tiny_model_dir):
    return colocated_greedy(tiny_model_dir, PROMPTS, MAX_TOKENS)


def pytest_terminal_summary(terminalreporter):
    if not OUTCOMES:
        return
    terminalreporter.section("chaos: faults and outcomes")
    terminalreporter.write_line(
        f"{'fault':<34}{'streams':>8}{'resumed':>9}{'ended':>7}{'max end s':>11}  statuses"
    )
    for row in OUTCOMES:
        terminalreporter.write_line(
            f"{row['fault']:<34}{row['streams']:>8}{row['completed']:>9}{row['ended']:>7}"
            f"{row['max_end_s']:>11.1f}  {row['statuses'] or '-'}"
        )
