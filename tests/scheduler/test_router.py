"""Routing policies over load snapshots, with charges between reports."""

import subprocess
import sys
from dataclasses import dataclass

import pytest

from scheduler import NoWorkerError, Router, SchedulerConfig


@dataclass(frozen=True)
class WorkerLoad:
    """Any object with a LoadSnapshot's attributes will do: the scheduler knows no runtime."""

    name: str
    role: str
    num_queued_prompt_tokens: int = 0
    num_running: int = 0
    num_waiting: int = 0
    num_free_blocks: int = 0
    block_size: int = 0
    prefill_tokens_per_s: float = 0.0
    decode_step_s: float = 0.0
    decode_step_s_per_seq: float = 0.0
    healthy: bool = True


def test_picks_least_loaded_and_charges_between_reports():
    r = Router()
    r.report(WorkerLoad("p0", "prefill", num_queued_prompt_tokens=100))
    r.report(WorkerLoad("p1", "prefill", num_queued_prompt_tokens=30))
    assert r.pick_prefill([7] * 50) == "p1"  # p1 now charged 80
    assert r.pick_prefill([7] * 50) == "p1"  # 80 < 100
    assert r.pick_prefill([7] * 50) == "p0"  # 130 > 100
    r.report(WorkerLoad("p1", "prefill"))  # a fresh report drops the charges
    assert r.pick_prefill([7] * 1) == "p1"


def test_decode_prefers_fewer_running_then_more_free_blocks():
    r = Router()
    r.report(WorkerLoad("d0", "decode", num_running=2, num_free_blocks=100))
    r.report(WorkerLoad("d1", "decode", num_running=2, num_free_blocks=300))
    r.report(WorkerLoad("d2", "decode", num_running=5, num_free_blocks=900))
    assert [r.pick_decode() for _ in range(3)] == ["d1", "d0", "d1"]


def test_unhealthy_and_excluded_workers_are_skipped():
    r = Router()
    r.report(WorkerLoad("d0", "decode", healthy=False))
    r.report(WorkerLoad("d1", "decode", num_running=9))
    assert r.pick_decode() == "d1"
    with pytest.raises(NoWorkerError, match="no healthy decode worker outside"):
        r.pick_decode(exclude=frozenset({"d1"}))
    with pytest.raises(NoWorkerError):
        r.pick_colocated([7] * 10)


def test_scheduler_imports_no_torch_and_nothing_of_runtime():
    code = (
        "import importlib, pkgutil, sys, scheduler; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(scheduler.__path__, "
        "'scheduler.')]; "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('runtime')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_decode_avoids_a_worker_that_cannot_hold_the_kv_when_another_can():
    r = Router()
    r.report(WorkerLoad("d0", "decode", num_running=0, num_free_blocks=3, block_size=16))
    r.report(WorkerLoad("d1", "decode", num_running=5, num_free_blocks=40, block_size=16))
    assert r.pick_decode(num_kv_tokens=100) == "d1"  # d0 holds 48 tokens, d1 640
    assert r.pick_decode(num_kv_tokens=10) == "d0"  # both can: fewer sequences wins
    # d1 is charged 101 tokens (7 blocks) since its report: 33 left, not enough for 600.
    assert r.pick_decode(num_kv_tokens=600) == "d0"  # nobody can: least loaded, it waits
    assert r.pick_decode(num_kv_tokens=500) == "d1"


def test_least_loaded_weighs_queues_by_each_workers_measured_rate():
    r = Router()
    r.report(WorkerLoad("slow", "prefill", num_queued_prompt_tokens=100, prefill_tokens_per_s=100))
    r.report(WorkerLoad("fast", "prefill", num_queued_prompt_tokens=900, prefill_tokens_per_s=2000))
    assert r.pick_prefill([1] * 100) == "fast"  # 0.5 s ahead of it there, 2 s on "slow"


def test_round_robin_takes_workers_in_turn_skipping_unhealthy_ones():
    r = Router(SchedulerConfig(routing="round_robin"))
    for name in ("p0", "p1", "p2"):
        r.report(WorkerLoad(name, "prefill", num_queued_prompt_tokens=0 if name != "p1" else 99))
    r.report(WorkerLoad("d0", "decode"))
    r.report(WorkerLoad("d1", "decode", num_running=50))
    assert [r.pick_prefill([1] * 10) for _ in range(4)] == ["p0", "p1", "p2", "p0"]
    assert [r.pick_decode() for _ in range(3)] == ["d0", "d1", "d0"]
    r.report(WorkerLoad("p1", "prefill", healthy=False))
    assert {r.pick_prefill([1] * 10) for _ in range(4)} == {"p0", "p2"}


def _affinity_router(imbalance: int = 4096) -> Router:
    r = Router(SchedulerConfig(routing="prefix_affinity", affinity_max_imbalance_tokens=imbalance))
    for name in ("p0", "p1", "p2"):
        r.report(WorkerLoad(name, "prefill", block_size=16))
    return r


def test_prefix_affinity_sends_a_shared_prefix_back_to_the_same_worker():
    r = _affinity_router()
    system_a, system_b = list(range(1000, 1064)), list(range(2000, 2064))
    first_a = r.pick_prefill(system_a + [1, 2, 3])
    first_b = r.pick_prefill(system_b + [4, 5])
    assert first_a != first_b  # an unseen prefix goes least-loaded
    for tail in ([9], [8, 7, 6], list(range(40))):
        assert r.pick_prefill(system_a + tail) == first_a
        assert r.pick_prefill(system_b + tail) == first_b
    # Only the cached part is charged: p(a) holds 4 blocks of each 64-token system prompt.
    loads = {n: e.queued_prompt_tokens for n, e in r._entries.items()}
    assert loads[first_a] < 3 * 64


def test_prefix_affinity_gives_way_to_load_past_the_imbalance_bound():
    r = _affinity_router(imbalance=100)
    prompt = list(range(64))
    home = r.pick_prefill(prompt + [1])
    r.report(WorkerLoad(home, "prefill", num_queued_prompt_tokens=500, block_size=16))
    assert r.pick_prefill(prompt + [2]) != home  # 500 queued there, 0 elsewhere
    r.report(WorkerLoad(home, "prefill", num_queued_prompt_tokens=50, block_size=16))
    assert r.pick_prefill(prompt + [3]) == home  # within the bound: affinity wins again


def test_a_dead_worker_forgets_its_prefixes():
    r = _affinity_router()
    prompt = list(range(64))
    home = r.pick_prefill(prompt)
    r.report(WorkerLoad(home, "prefill", healthy=False))
    r.report(WorkerLoad(home, "prefill", block_size=16))  # back, restarted: cache empty
    assert r._entries[home].matched_blocks([hash((0, tuple(prompt[:16])))]) == 0
