"""The pool balancer on a live cluster: a decode worker flipped to prefill finishes the
request it holds first (nothing is cut off or recomputed), is replaced by a prefill worker
that serves correct tokens, and the action shows in ClusterStatus and the metrics; then a
shift to decode-heavy load makes the policy itself flip a prefill worker back to decode
while requests stream, every output equal to the reference and every KV block back; idle,
a spare decode worker is stopped, and prompt-heavy load starts one more prefill worker."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import ray
from cluster_helpers import ENGINE, colocated_greedy, tiny_cluster_config
from prometheus_text import samples, value

from runtime.client import Client
from runtime.cluster.background import BackgroundServer
from scheduler.balancer import Action

PROMPTS = [[20 + i] + list(range(60, 90)) for i in range(2)]
MAX_TOKENS = 60


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    config = tiny_cluster_config(
        tiny_model_dir,
        {
            # Half a CPU each: the chaos tests' session-wide cluster may hold 2 of the
            # shared Ray's 4 CPUs while this module runs.
            "prefill": {"replicas": 1, "num_cpus": 0.5, "max_replicas": 2},
            "decode": {"replicas": 2, "num_cpus": 0.5, "min_replicas": 1},
        },
        # Four sequences per batch: a few long generations fill a decode worker's slots.
        engine={**ENGINE, "max_num_seqs": 4},
        # The balancer's own loop never acts (a day between steps): the tests step it.
        scheduler={
            "ttft_slo_s": 600,
            "tpot_slo_s": 600,
            "balancer": {
                "enabled": True,
                "interval_s": 86400,
                "window_s": 600,
                "min_requests": 4,
                "cooldown_s": 0,
                # Between a tiny model's millisecond steps, gRPC and the KV handoffs take
                # 10-20% of a saturated prefill worker's time.
                "high_pressure": 0.6,
                "low_pressure": 0.4,
            },
        },
    )
    with BackgroundServer(config) as server:
        yield server


def test_a_flip_drains_the_decode_worker_then_serves_as_prefill(
    server, tiny_model_dir, monkeypatch
):
    reference = colocated_greedy(tiny_model_dir, PROMPTS, MAX_TOKENS)
    flip = Action(time.monotonic(), "flip", "prefill", "the test asked", source="decode")
    with Client(server.grpc_url, timeout=120) as client:

        def run(prompt):
            return client.generate(
                prompt_token_ids=prompt, max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True
            )

        with ThreadPoolExecutor(2) as pool:
            outs = [pool.submit(run, p) for p in PROMPTS]
            end = time.monotonic() + 30  # both decode workers hold one request
            while server.frontend.dispatcher.num_in_flight < 2 and time.monotonic() < end:
                time.sleep(0.01)
            balancer = server.balancer
            # Handed the action, so what is checked is how it is carried out.
            monkeypatch.setattr(balancer.policy, "decide", lambda *pools: flip)
            done = server.run(balancer.step(), timeout=300).outcome
            results = [f.result() for f in outs]
        assert [r.token_ids for r in results] == reference  # nothing cut off by the flip
        old, new = done.split(" -> ")
        assert old.startswith("decode-") and new.startswith("prefill-")
        roles = sorted(w.role for w in server.workers)
        assert roles == ["decode", "prefill", "prefill"]
        assert (
            new in {w.name for w in server.workers}
            and old not in server.frontend.dispatcher.workers
        )

        # The new prefill worker serves: enough requests that both prefill workers take some.
        with ThreadPoolExecutor(4) as pool:
            again = list(pool.map(run, PROMPTS * 3))
        assert [r.token_ids for r in again] == reference * 3
        used = {r.timings.prefill_worker for r in again}
        assert new in used

    with Client(server.grpc_url) as client:
        status = client.cluster_status()
    assert [(a.kind, a.source, a.outcome) for a in status.balancer_actions] == [
        ("flip", "decode", done)
    ]
    assert sorted(w.role for w in status.workers) == ["decode", "prefill", "prefill"]
    metrics = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    flips = value(
        samples(metrics),
        "tandem:balancer_actions_total",
        kind="flip",
        pool="prefill",
        outcome="done",
    )
    assert flips == 1


def test_a_shift_to_decode_heavy_load_flips_a_prefill_worker_back(server, tiny_model_dir):
    # After the first test: 2 prefill workers, 1 decode worker of 4 batch slots. Eight long
    # generations at once fill its slots (pressure past 0.9) while the prefill pool idles.
    prompts = [[40 + i] + list(range(100, 120)) for i in range(8)]
    reference = colocated_greedy(tiny_model_dir, prompts, 150)
    balancer = server.balancer
    with Client(server.grpc_url, timeout=300) as client:

        def run(prompt):
            return client.generate(
                prompt_token_ids=prompt, max_tokens=150, temperature=0.0, ignore_eos=True
            )

        with ThreadPoolExecutor(8) as pool:
            outs = [pool.submit(run, p) for p in prompts]
            action = None
            end = time.monotonic() + 120
            while action is None and time.monotonic() < end and not all(o.done() for o in outs):
                time.sleep(0.5)
                action = server.run(balancer.step(), timeout=300)
            results = [o.result() for o in outs]
    assert action is not None, "the balancer did not act on the decode-heavy load"
    assert (action.kind, action.role, action.source) == ("flip", "decode", "prefill")
    assert "decode is at" in action.reason, action.reason
    old, new = action.outcome.split(" -> ")
    assert old.startswith("prefill-") and new.startswith("decode-")
    assert [r.token_ids for r in results] == reference
    assert sorted(w.role for w in server.workers) == ["decode", "decode", "prefill"]
    assert_blocks_back(server)


def test_an_idle_pool_shrinks_and_a_busy_one_grows_within_its_bounds(server, tiny_model_dir):
    # After the second test: 1 prefill worker (at most 2), 2 decode workers (at least 1).
    short = [[60 + i, 61, 62, 63] for i in range(4)]
    long = [[70 + i] + [(7 * j) % 300 for j in range(380)] for i in range(8)]
    reference = colocated_greedy(tiny_model_dir, short + long, 4)
    balancer = server.balancer
    with Client(server.grpc_url, timeout=300) as client:

        def run(prompt):
            return client.generate(
                prompt_token_ids=prompt, max_tokens=4, temperature=0.0, ignore_eos=True
            )

        # A light load: decode can spare a worker and nothing is short, so it shrinks.
        assert [run(p).token_ids for p in short] == reference[:4]
        shrink = server.run(balancer.step(), timeout=300)
        assert shrink is not None and (shrink.kind, shrink.role) == ("scale_down", "decode")
        assert shrink.outcome.startswith("stopped decode-")

        # Long prompts keep the prefill worker busy; decode has none to spare: it grows.
        # (The tiny model computes a prompt in milliseconds: 8 clients send them in a loop
        # until the balancer acts.)
        stop = threading.Event()

        def client_loop(prompt):
            outs = []
            while not stop.is_set():
                outs.append(run(prompt).token_ids)
            return outs

        with ThreadPoolExecutor(8) as pool:
            outs = [pool.submit(client_loop, p) for p in long]
            time.sleep(1.0)  # the queue fills before the busy time is first marked
            grow = server.run(balancer.step(), timeout=300)
            end = time.monotonic() + 60
            while grow is None and time.monotonic() < end:
                time.sleep(1.0)
                grow = server.run(balancer.step(), timeout=300)
            stop.set()
            results = [o.result() for o in outs]
    assert grow is not None, "the balancer did not grow the busy prefill pool"
    assert (grow.kind, grow.role) == ("scale_up", "prefill") and "prefill is at" in grow.reason
    assert grow.outcome.startswith("started prefill-")
    assert all(
        outs and set(map(tuple, outs)) == {tuple(ref)} for outs, ref in zip(results, reference[4:])
    )
    assert sorted(w.role for w in server.workers) == ["decode", "prefill", "prefill"]
    assert_blocks_back(server)


def assert_blocks_back(server) -> None:
    """Every worker's KV blocks come back once the load is gone."""
    end = time.monotonic() + 30
    while time.monotonic() < end:
        loads = [ray.get(w.actor.load.remote()) for w in server.workers]
        if all(w.num_free_blocks == w.num_total_blocks for w in loads):
            break
        time.sleep(0.2)
    assert [(w.name, w.num_free_blocks) for w in loads] == [
        (w.name, w.num_total_blocks) for w in loads
    ]
