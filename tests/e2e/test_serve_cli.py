"""`tandem serve --demo` as a user runs it: healthy, answers the SDK CLI, stops on Ctrl-C or on
SIGTERM (what systemd, Kubernetes and `timeout` send)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_demo_status_generate_and_stop(tiny_model_dir, tmp_path, stop_signal):
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(tiny_model_dir), "max_model_len": 256},
                "engine": {"block_size": 4, "num_blocks": 128, "num_threads": 1},
                "pools": {"prefill": {"replicas": 1}, "decode": {"replicas": 1}},
                "server": {"grpc_port": 0, "http_port": 0},
                "ray": {"num_cpus": 2},
            }
        )
    )
    env = {**os.environ, "TANDEM_WORKER_LOGS": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", "--config", str(cfg), "--demo"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 240
        while not any(line.startswith("Query it") for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stdout.readline())
        out = "".join(lines)
        assert "KV transfer" in out and "prefill-0 -> decode-0" in out
        url = next(line for line in lines if "serving" in line).split("gRPC ")[1].split()[0]
        cli = [sys.executable, "-m", "runtime.cli"]
        status = subprocess.run(
            cli + ["status", "--url", url], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0 and "SERVING; disaggregated" in status.stdout
        gen = subprocess.run(
            cli + ["generate", "--url", url, "--max-tokens", "4", "--timings", "Hello"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert gen.returncode == 0 and "prefill" in gen.stderr
        bad = subprocess.run(
            cli + ["generate", "--url", url, "--max-tokens", "0", "Hello"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr
    finally:
        proc.send_signal(stop_signal)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "tandem: stopped" in rest
