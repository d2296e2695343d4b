"""benchmarks/serve.py against a client no one here wrote: vLLM's own `bench serve`, the same
workload against the same running SmolLM2 cluster, agree within 10% on median TTFT, median
TPOT and request throughput. Needs vLLM's venv (`make install-vllm`, or TANDEM_VLLM_PYTHON):
skipped without it. Slow (several minutes: vLLM's import alone takes a while)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.cluster import load_cluster_config
from runtime.cluster.background import BackgroundServer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import serve_vs_vllm  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.model]


def vllm_python() -> str | None:
    """The first of TANDEM_VLLM_PYTHON, this venv's python that has vllm installed."""
    for python in (os.environ.get("TANDEM_VLLM_PYTHON"), sys.executable):
        if python and Path(python).exists():
            probe = "import importlib.util, sys; sys.exit(not importlib.util.find_spec('vllm'))"
            if subprocess.run([python, "-c", probe]).returncode == 0:
                return python
    return None


def test_serve_py_agrees_with_vllm_bench_serve_within_10_percent(default_model_dir, tmp_path):
    python = vllm_python()
    if python is None:
        pytest.skip("vLLM's venv is missing: run `make install-vllm` or set TANDEM_VLLM_PYTHON")
    overrides = {
        "model": {"path": str(default_model_dir)},
        "server": {"grpc_port": 0, "http_port": 0},
    }
    config = load_cluster_config(REPO / "runtime/configs/local.yaml", overrides=overrides)
    args = argparse.Namespace(
        vllm_python=python, input_len=128, output_len=32, num_prompts=20,
        request_rate=float("inf"), max_concurrency=1, rounds=2, seed=0, out=str(tmp_path),
        quiet=True,
    )  # fmt: skip
    with BackgroundServer(config) as server:
        serve_vs_vllm.warm_up(server.http_url, server.config.model_name, args.input_len)
        report = serve_vs_vllm.compare(
            args, server.http_url, server.config.model_name, str(default_model_dir)
        )
    for key, row in report["summary"].items():
        assert 0.9 <= row["ratio"] <= 1.1, (key, report)
