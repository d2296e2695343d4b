"""`kill -9` of a worker under concurrent streams: Ray restarts it, the frontend routes to the
new process, and every request in flight resumes (output equal to a clean run's) or ends
UNAVAILABLE, within bounded time, with every worker's KV blocks back at their baseline."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
import ray
from chaos_helpers import GREEDY, INTERNALS, PROMPTS, check_invariants, run_streams

from runtime.client import Client, RetryPolicy, UnavailableError

pytestmark = pytest.mark.chaos


def kill(server, role: str) -> None:
    [worker] = [w for w in server.workers if w.role == role]
    os.kill(ray.get(worker.actor.pid.remote()), signal.SIGKILL)


@pytest.mark.parametrize("role", ["decode", "prefill"])
def test_kill_9_during_streams_resumes_them(chaos_server, chaos_reference, role):
    async def kill_once_streaming(got):
        while min(got) < 3:
            await asyncio.sleep(0.002)
        kill(chaos_server, role)
        return time.monotonic()

    results = asyncio.run(run_streams(chaos_server, during=kill_once_streaming))
    check_invariants(chaos_server, chaos_reference, results, f"kill -9 {role} worker")
    assert all(err is None for _, err, _ in results), [str(e) for _, e, _ in results if e]


def wait_until(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, what
        time.sleep(0.05)


def test_while_a_pool_is_down_health_says_so_and_new_requests_get_a_retry_hint(
    chaos_server, chaos_reference
):
    server = chaos_server
    kill(server, "decode")
    with Client(server.grpc_url, timeout=30, retry=RetryPolicy(max_attempts=1)) as client:
        wait_until(lambda: client.health() == "NOT_SERVING", 15, "health stayed SERVING")
        assert httpx.get(f"{server.http_url}/health").status_code == 503
        # The restarted worker loads its model for seconds: these land while it is down.
        with pytest.raises(UnavailableError) as info:
            client.generate(PROMPTS[2], **GREEDY)
        assert "no healthy decode worker; retry in 5 s" in info.value.details
        r = httpx.post(f"{server.http_url}/v1/completions", json={"prompt": "hi", "max_tokens": 2})
        assert (r.status_code, r.headers.get("retry-after")) == (503, "5")
        assert not INTERNALS.search(info.value.details + r.text)
        wait_until(lambda: client.health() == "SERVING", 60, "the decode pool did not return")
        assert client.generate(PROMPTS[2], **GREEDY).token_ids == chaos_reference[2]
    assert httpx.get(f"{server.http_url}/health").status_code == 200
