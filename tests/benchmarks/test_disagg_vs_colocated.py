"""benchmarks/disagg_vs_colocated.py's pieces: the configurations on equal hardware, the
pinning of a worker's threads, the ratios to the colocated baseline."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from disagg_vs_colocated import layouts, pin, ratios


def test_every_split_uses_the_same_cores_as_the_colocated_baseline():
    lay = layouts(3)
    assert list(lay) == ["colocated", "1P+2D", "2P+1D"]
    assert (
        lay["colocated"]["cores"] == [[0, 1, 2]] and lay["colocated"]["threads"]["colocated"] == 3
    )
    for name in ("1P+2D", "2P+1D"):
        pools = lay[name]["pools"]
        assert pools["prefill"]["replicas"] + pools["decode"]["replicas"] == 3
        assert lay[name]["cores"] == [[0], [1], [2]]  # one worker per core, one thread each
    assert lay["2P+1D"]["pools"]["prefill"]["replicas"] == 2
    assert list(layouts(2)) == ["colocated", "1P+1D"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_pin_moves_every_thread_of_a_process():
    code = (
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(30,)).start()\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        tids = []
        while len(tids) < 2:
            tids = os.listdir(f"/proc/{child.pid}/task")
        pin(child.pid, [1])
        assert all(
            os.sched_getaffinity(int(t)) == {1} for t in os.listdir(f"/proc/{child.pid}/task")
        )
    finally:
        child.kill()
        child.wait()


def test_ratios_are_against_the_baseline_at_the_same_rate():
    def run(rate, goodput, ttft, tpot, itl):
        return {"request_rate": rate, "request_goodput": goodput, "p99_ttft_ms": ttft,
                "p99_tpot_ms": tpot, "p99_itl_ms": itl}  # fmt: skip

    results = {
        "colocated": [run(1.0, 0.8, 1000, 50, 80), run(2.0, 0.5, 4000, 100, 300)],
        "1P+1D": [run(1.0, 1.0, 500, 40, 40), run(2.0, 0.0, 8000, 50, 100)],
    }
    rows = {(r["config"], r["request_rate"]): r for r in ratios(results)}
    assert rows[("colocated", 2.0)]["p99_ttft_ms_ratio"] == 1.0
    one = rows[("1P+1D", 1.0)]
    assert one["request_goodput_ratio"] == pytest.approx(1.25)
    assert (one["p99_ttft_ms_ratio"], one["p99_tpot_ms_ratio"], one["p99_itl_ms_ratio"]) == (
        0.5,
        0.8,
        0.5,
    )
    two = rows[("1P+1D", 2.0)]
    assert two["request_goodput_ratio"] == 0.0 and two["p99_ttft_ms_ratio"] == 2.0
    zero = ratios({"colocated": [run(1.0, 0.0, 1, 1, 1)], "x": [run(1.0, 0.3, 1, 1, 1)]})
    assert zero[1]["request_goodput_ratio"] is None  # no ratio to a baseline of zero
