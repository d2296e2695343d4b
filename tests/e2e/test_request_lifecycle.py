"""Every request ends and leaves nothing behind (1 prefill + 1 decode on a real local Ray):
requests that end on their first token, and two clients sending the same request id."""

from __future__ import annotations

import asyncio

import httpx
import ray
from cluster_helpers import PROMPTS, colocated_greedy, wait_for_free_blocks

from runtime.client import AsyncClient, Client

ONE_TOKEN = dict(max_tokens=1, temperature=0.0, ignore_eos=True)


def open_streams(server) -> dict[str, int]:
    return {w.name: ray.get(w.actor.num_open_streams.remote()) for w in server.workers}


def assert_idle(server) -> None:
    assert set(wait_for_free_blocks(server).values()) == {256}
    assert open_streams(server) == {"prefill-0": 0, "decode-0": 0}
    assert server.frontend.dispatcher.num_in_flight == 0


def test_500_one_token_requests_over_grpc_and_http_each_get_their_token(
    disaggregated_server, tiny_model_dir
):
    server = disaggregated_server
    first = [ids[0] for ids in colocated_greedy(tiny_model_dir, PROMPTS, 1)]
    with Client(server.grpc_url, timeout=30) as client:
        for i in range(500):
            out = client.generate(PROMPTS[i % len(PROMPTS)], **ONE_TOKEN)
            assert (out.token_ids, out.finish_reason) == ([first[i % len(PROMPTS)]], "length"), i
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        for i in range(500):
            body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 1, "temperature": 0}
            r = http.post("/v1/completions", json=body)
            assert r.status_code == 200, (i, r.text)
            choice = r.json()["choices"][0]
            assert (
                choice["finish_reason"] == "length" and r.json()["usage"]["completion_tokens"] == 1
            ), (i, r.json())
    assert_idle(server)
    with Client(server.grpc_url, timeout=10) as client:  # answers at once, not after a wedge
        out = client.generate(PROMPTS[0], max_tokens=4, temperature=0.0, ignore_eos=True)
    assert len(out.token_ids) == 4
    assert_idle(server)


def test_same_request_id_from_two_clients_runs_both(disaggregated_server, tiny_model_dir):
    server = disaggregated_server
    want = colocated_greedy(tiny_model_dir, PROMPTS[:2], 24)

    async def one(prompt):
        async with AsyncClient(server.grpc_url, timeout=60) as client:
            return await client.generate(
                prompt, request_id="same-id", max_tokens=24, temperature=0.0, ignore_eos=True
            )

    async def both():
        return await asyncio.gather(one(PROMPTS[0]), one(PROMPTS[1]))

    outs = asyncio.run(both())
    assert [o.token_ids for o in outs] == want
    assert [o.request_id for o in outs] == ["same-id", "same-id"]
    assert_idle(server)
