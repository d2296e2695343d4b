"""Least-loaded routing from load snapshots, with charges between reports."""

import subprocess
import sys
from dataclasses import dataclass

import pytest

from scheduler import NoWorkerError, Router


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
    healthy: bool = True


def test_picks_least_loaded_and_charges_between_reports():
    r = Router()
    r.report(WorkerLoad("p0", "prefill", num_queued_prompt_tokens=100))
    r.report(WorkerLoad("p1", "prefill", num_queued_prompt_tokens=30))
    assert r.pick_prefill(50) == "p1"  # p1 now charged 80
    assert r.pick_prefill(50) == "p1"  # 80 < 100
    assert r.pick_prefill(50) == "p0"  # 130 > 100
    r.report(WorkerLoad("p1", "prefill"))  # a fresh report drops the charges
    assert r.pick_prefill(1) == "p1"


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
        r.pick_colocated(10)


def test_scheduler_imports_no_torch_and_nothing_of_runtime():
    code = (
        "import sys, scheduler, scheduler.router; "
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
