"""Each injected fault (runtime.faults) under 8 concurrent streams on a real cluster: every
request completes with the clean run's output (resumed or retried) or ends with a clear
status, none hangs, the KV blocks come back, and the cluster serves again."""

from __future__ import annotations

import asyncio
import time

import pytest
import ray
from chaos_helpers import check_invariants, run_streams

from runtime.faults import FaultConfig

pytestmark = pytest.mark.chaos

FAULTS = {
    "kill prefill at admitted": FaultConfig(kill_at="prefill.admitted"),
    "kill prefill at first token": FaultConfig(kill_at="prefill.first_token"),
    "kill decode at KV header": FaultConfig(kill_at="kv.header_received"),
    "kill decode while streaming": FaultConfig(kill_at="decode.token", times=40),
    "KV chunk delayed 20 ms": FaultConfig(kv_delay_s=0.02, times=1000),
    "KV chunk dropped": FaultConfig(kv_drop_chunk=True, times=2),
    "KV chunk corrupted": FaultConfig(kv_corrupt_chunk=True, times=2),
    "KV link stalled past deadline": FaultConfig(kv_stall_s=4.0),
    "decode refuses blocks": FaultConfig(kv_refuse_blocks=True, times=3),
}


def set_faults(server, faults: FaultConfig) -> dict[str, int]:
    """Set `faults` on every worker; how often the faults they replace fired, summed."""
    fired: dict[str, int] = {}
    for counts in ray.get([w.actor.set_faults.remote(faults) for w in server.workers]):
        for name, n in counts.items():
            fired[name] = fired.get(name, 0) + n
    return fired


def incarnations(server) -> set[str]:
    return {ray.get(w.actor.info.remote())["incarnation"] for w in server.workers}


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_under_concurrent_streams(chaos_server, chaos_reference, name):
    fault = FAULTS[name]
    before = incarnations(chaos_server)

    async def inject(got):
        set_faults(chaos_server, fault)
        return time.monotonic()

    results = asyncio.run(run_streams(chaos_server, during=inject))
    check_invariants(chaos_server, chaos_reference, results, name)
    # A killed worker came back without faults; the survivors report what fired.
    fired = set_faults(chaos_server, FaultConfig())
    if fault.kill_at:
        assert incarnations(chaos_server) != before, f"{name}: no worker was killed"
    else:
        assert fired, f"{name}: the fault never fired"
