"""Helpers of the chaos tests: concurrent streams around a fault, and the invariants after."""

from __future__ import annotations

import asyncio
import re
import time

import grpc
from cluster_helpers import wait_for_free_blocks

from runtime.client import AsyncClient, Client, TandemError

PROMPTS = [
    "The quick brown fox",
    "Paged attention keeps",
    "Hello world!",
    "Prefill is compute bound; decode is memory bound. " * 6,
]
MAX_TOKENS = 160
GREEDY = dict(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
# What a client-facing error must never carry: actor ids, pids, addresses.
INTERNALS = re.compile(r"[0-9a-f]{16,}|\bpid\b|\d+\.\d+\.\d+\.\d+|actor", re.IGNORECASE)
OUTCOMES: list[dict] = []  # one row per fault, printed by conftest at the end


async def run_streams(server, n: int = 8, during=None):
    """n concurrent greedy streams; `during(got)` (a coroutine, given each stream's token
    count so far) runs beside them and returns the moment of its fault. Returns per stream
    (token ids, error or None, seconds from the fault to the stream's end)."""
    got = [0] * n

    async def one(client, i):
        ids = []
        try:
            async for chunk in client.stream(PROMPTS[i % len(PROMPTS)], **GREEDY):
                ids += chunk.token_ids
                got[i] = len(ids)
            return ids, None, time.monotonic()
        except TandemError as e:
            return ids, e, time.monotonic()

    async with AsyncClient(server.grpc_url, timeout=120) as client:
        tasks = [asyncio.create_task(one(client, i)) for i in range(n)]
        at = await during(got) if during else time.monotonic()
        results = await asyncio.gather(*tasks)
    return [(ids, err, end - at) for ids, err, end in results]


def check_invariants(server, reference, results, fault: str, within_s: float = 30) -> None:
    """Every stream completed with the clean run's tokens or ended with a clear status (no
    internals in it), within `within_s` of the fault; the cluster serves a correct greedy
    request within 60 s; every worker's KV blocks are back at the baseline."""
    statuses = []
    for i, (ids, err, after) in enumerate(results):
        assert after < within_s, f"{fault}: stream {i} ended {after:.1f} s after the fault"
        want = reference[i % len(PROMPTS)]
        if err is None:
            assert ids == want, f"{fault}: stream {i} differs from the clean run"
            continue
        statuses.append(err.code.name)
        assert err.code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ), (fault, err)
        assert not INTERNALS.search(err.details), err.details
        assert ids == want[: len(ids)], f"{fault}: stream {i} sent wrong tokens before failing"
    end = time.monotonic() + 60
    with Client(server.grpc_url, timeout=30) as client:
        while client.health() != "SERVING":
            assert time.monotonic() < end, f"{fault}: the cluster did not come back in 60 s"
            time.sleep(0.2)
        assert client.generate(PROMPTS[1], **GREEDY).token_ids == reference[1], fault
    free = wait_for_free_blocks(server)
    assert set(free.values()) == {256}, (fault, free)
    OUTCOMES.append(
        {
            "fault": fault,
            "streams": len(results),
            "completed": sum(e is None for _, e, _ in results),
            "ended": len(statuses),
            "max_end_s": max(a for _, _, a in results),
            "statuses": ", ".join(sorted(set(statuses))),
        }
    )
