"""`kill -9` of a worker under concurrent streams: Ray restarts it, the frontend routes to the
new process, and every request in flight resumes (output equal to a clean run's) or ends
UNAVAILABLE, within bounded time, with every worker's KV blocks back at their baseline."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import grpc
import httpx
import pytest
import ray

from cluster_helpers import colocated_greedy, tiny_cluster_config, wait_for_free_blocks
from runtime.client import AsyncClient, Client, RetryPolicy, TandemError, UnavailableError
from runtime.cluster.background import BackgroundServer

pytestmark = pytest.mark.chaos
PROMPTS = ["The quick brown fox", "Paged attention keeps", "Hello world!",
           "Prefill is compute bound; decode is memory bound. " * 6]
MAX_TOKENS = 160
GREEDY = dict(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
# What a client-facing error must never carry: actor ids, pids, addresses.
INTERNALS = re.compile(r"[0-9a-f]{16,}|\bpid\b|\d+\.\d+\.\d+\.\d+|actor", re.IGNORECASE)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    config = tiny_cluster_config(tiny_model_dir, {"prefill": {"replicas": 1, "num_cpus": 1},
                                                  "decode": {"replicas": 1, "num_cpus": 1}},
                                 server={"grpc_port": 0, "http_port": 0,
                                         "recovery_timeout_s": 40})
    with BackgroundServer(config) as s:
        yield s


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return colocated_greedy(tiny_model_dir, PROMPTS, MAX_TOKENS)


def kill(server, role: str) -> None:
    [worker] = [w for w in server.workers if w.role == role]
    os.kill(ray.get(worker.actor.pid.remote()), signal.SIGKILL)


async def streams_with_a_kill(server, role: str, when_tokens: int, n: int = 8):
    """n concurrent greedy streams; `role`'s worker is killed once every stream has
    `when_tokens` tokens. Returns per stream (token ids, error or None, seconds after the
    kill that it ended)."""
    got = [0] * n
    killed_at: list[float] = []

    async def one(client, i):
        ids = []
        try:
            async for chunk in client.stream(PROMPTS[i % len(PROMPTS)], **GREEDY):
                ids += chunk.token_ids
                got[i] = len(ids)
            return ids, None, time.monotonic()
        except TandemError as e:
            return ids, e, time.monotonic()

    async def killer():
        while min(got) < when_tokens:
            await asyncio.sleep(0.002)
        kill(server, role)
        killed_at.append(time.monotonic())

    async with AsyncClient(server.grpc_url, timeout=120) as client:
        tasks = [asyncio.create_task(one(client, i)) for i in range(n)]
        await killer()
        results = await asyncio.gather(*tasks)
    return [(ids, err, end - killed_at[0]) for ids, err, end in results]


def assert_recovered(server, reference, results):
    for i, (ids, err, after_kill) in enumerate(results):
        assert after_kill < 30, f"stream {i} ended {after_kill:.1f} s after the kill"
        if err is None:
            assert ids == reference[i % len(PROMPTS)], f"stream {i} resumed wrongly"
        else:
            assert err.code == grpc.StatusCode.UNAVAILABLE, err
            assert not INTERNALS.search(err.details), err.details
            assert ids == reference[i % len(PROMPTS)][:len(ids)]
    end = time.monotonic() + 60
    with Client(server.grpc_url, timeout=30) as client:
        while client.health() != "SERVING":
            assert time.monotonic() < end, "the cluster did not come back within 60 s"
            time.sleep(0.2)
        out = client.generate(PROMPTS[1], **GREEDY)
    assert out.token_ids == reference[1]
    assert set(wait_for_free_blocks(server).values()) == {256}


@pytest.mark.parametrize("role", ["decode", "prefill"])
def test_kill_9_during_streams_resumes_them(server, reference, role):
    results = asyncio.run(streams_with_a_kill(server, role, when_tokens=3))
    assert_recovered(server, reference, results)
    resumed = sum(err is None for _, err, _ in results)
    assert resumed == len(results), [str(e) for _, e, _ in results if e]


def wait_until(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, what
        time.sleep(0.05)


def test_while_a_pool_is_down_health_says_so_and_new_requests_get_a_retry_hint(server,
                                                                              reference):
    kill(server, "decode")
    with Client(server.grpc_url, timeout=30, retry=RetryPolicy(max_attempts=1)) as client:
        wait_until(lambda: client.health() == "NOT_SERVING", 15, "health stayed SERVING")
        assert httpx.get(f"{server.http_url}/health").status_code == 503
        # The restarted worker loads its model for seconds: these land while it is down.
        with pytest.raises(UnavailableError) as info:
            client.generate(PROMPTS[2], **GREEDY)
        assert "no healthy decode worker; retry in 5 s" in info.value.details
        r = httpx.post(f"{server.http_url}/v1/completions",
                       json={"prompt": "hi", "max_tokens": 2})
        assert (r.status_code, r.headers.get("retry-after")) == (503, "5")
        assert not INTERNALS.search(info.value.details + r.text)
        wait_until(lambda: client.health() == "SERVING", 60, "the decode pool did not return")
        assert client.generate(PROMPTS[2], **GREEDY).token_ids == reference[2]
    assert httpx.get(f"{server.http_url}/health").status_code == 200
