"""Ctrl-C of `tandem serve` with 30 streams in flight (gRPC and HTTP): new requests are
refused, those in flight end (finished, or UNAVAILABLE after the grace period), the process
exits soon after the grace period with no traceback, and Ray and the workers go with it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from runtime.client import AsyncClient, RetryPolicy, TandemError

pytestmark = pytest.mark.chaos
REPO = Path(__file__).resolve().parents[2]
GRACE_S = 1.0
LONG = dict(max_tokens=480, temperature=0.0, ignore_eos=True)


def start_serve(model_dir, tmp_path) -> tuple[subprocess.Popen, str, str]:
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(model_dir), "max_model_len": 512},
                "engine": {"block_size": 4, "num_blocks": 4096, "num_threads": 1},
                "pools": {"prefill": {"replicas": 1}, "decode": {"replicas": 1}},
                "server": {"grpc_port": 0, "http_port": 0, "shutdown_grace_s": GRACE_S},
                "ray": {"num_cpus": 2},
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", "--config", str(cfg)],
        cwd=REPO,
        env={**os.environ, "TANDEM_WORKER_LOGS": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 240
    while True:
        line = proc.stdout.readline()
        assert line and time.monotonic() < deadline, "tandem serve did not start"
        if "serving" in line and "gRPC " in line:
            grpc_url = line.split("gRPC ")[1].split()[0]
            http_url = line.split("HTTP ")[1].split()[0]
            return proc, grpc_url, http_url


async def load_then_interrupt(proc, grpc_url, http_url, n_grpc=20, n_http=10):
    started = []

    async def grpc_stream(client):
        got = []
        try:
            async for chunk in client.stream("The quick brown fox", **LONG):
                got += chunk.token_ids
                if len(got) == len(chunk.token_ids):
                    started.append(1)
            return "finished", len(got)
        except TandemError as e:
            return f"{e.code.name}: {e.details}", len(got)

    async def http_stream(http):
        body = {"prompt": "Hello world!", "stream": True, **LONG}
        outcome, n = "no [DONE]", 0
        async with http.stream("POST", "/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    return outcome, n
                event = json.loads(line[6:])
                if "error" in event:
                    outcome = f"error: {event['error']['message']}"
                elif event["choices"][0]["finish_reason"]:
                    outcome = "finished"
                else:
                    n += 1
                    if n == 1:
                        started.append(1)
        return outcome, n

    async with (
        AsyncClient(grpc_url, timeout=60, retry=RetryPolicy(max_attempts=1)) as client,
        httpx.AsyncClient(base_url=http_url, timeout=60) as http,
    ):
        tasks = [asyncio.create_task(grpc_stream(client)) for _ in range(n_grpc)]
        tasks += [asyncio.create_task(http_stream(http)) for _ in range(n_http)]
        while len(started) < n_grpc + n_http:
            assert not any(t.done() for t in tasks), [t.result() for t in tasks if t.done()]
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        results = await asyncio.gather(*tasks)
    return results, time.monotonic() - sent, sent


def test_ctrl_c_with_30_streams_in_flight(tiny_model_dir, tmp_path):
    proc, grpc_url, http_url = start_serve(tiny_model_dir, tmp_path)
    children = psutil.Process(proc.pid).children(recursive=True)
    try:
        results, streams_ended_s, sent = asyncio.run(load_then_interrupt(proc, grpc_url, http_url))
        rest, _ = proc.communicate(timeout=60)
        exited_s = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    outcomes = [o for o, _ in results]
    assert all(o == "finished" or "the server is shutting down" in o for o in outcomes), outcomes
    assert any(o != "finished" for o in outcomes), "nothing was in flight at the signal"
    assert all(n > 0 for _, n in results)
    assert streams_ended_s < GRACE_S + 5, streams_ended_s
    assert exited_s < 20, exited_s
    assert proc.returncode == 0 and "tandem: stopped" in rest, rest
    assert "Traceback" not in rest, rest
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, [p.info if hasattr(p, "info") else p for p in alive]
