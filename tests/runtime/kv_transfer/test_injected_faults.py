"""Injected KV faults (runtime.faults) on a loopback handoff: each fails the handoff with the
status a real fault of its kind gives, frees both sides' blocks, and fires only `times`."""

import time

import grpc
import pytest
from kv_handoff_helpers import PROMPTS, config
from test_handoff import assert_clean

from runtime.faults import FaultConfig, Faults
from runtime.kv_transfer import KVTransferError


def settle(pair, future, timeout=30.0):
    """Step the prefill side until the handoff settles (a stalled one waits its deadline)."""
    end = time.monotonic() + timeout
    while not future.done():
        assert time.monotonic() < end, "the handoff did not settle"
        pair.p_thread.call(pair.sender.step)
        time.sleep(0.005)


@pytest.mark.parametrize(
    "fault,code",
    [
        (dict(kv_drop_chunk=True), grpc.StatusCode.DATA_LOSS),
        (dict(kv_corrupt_chunk=True), grpc.StatusCode.DATA_LOSS),
        (dict(kv_stall_s=1.5), grpc.StatusCode.DEADLINE_EXCEEDED),
        (dict(kv_refuse_blocks=True), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
@pytest.mark.parametrize("layerwise_min_tokens", [10**9, 1], ids=["prefilled", "layerwise"])
def test_fault_fails_one_handoff_cleanly_then_handoffs_work(
    make_pair, colocated_reference, fault, code, layerwise_min_tokens
):
    faults = Faults(FaultConfig(**fault))
    pair = make_pair(
        faults=faults,
        prefill_kw={"budget": 16},
        sender_cfg=config(
            deadline_s=1.0, chunk_bytes=4096, layerwise_min_tokens=layerwise_min_tokens
        ),
    )
    start = pair.free_blocks()
    rid, future = pair.submit(PROMPTS[6])
    settle(pair, future)
    with pytest.raises(KVTransferError) as info:
        future.result(timeout=30)
    assert info.value.code == code, info.value
    assert_clean(pair, start)
    rid, future = pair.submit(PROMPTS[6])  # fired once (times=1): this one goes through
    settle(pair, future)
    future.result(timeout=30)
    assert pair.decode_all() == {rid: colocated_reference[6]}
    assert pair.free_blocks() == start


def test_delay_slows_every_message_but_loses_nothing(make_pair, colocated_reference):
    faults = Faults(FaultConfig(kv_delay_s=0.05, times=100))
    pair = make_pair(faults=faults, sender_cfg=config(chunk_bytes=4096, layerwise_min_tokens=10**9))
    rid, future = pair.submit(PROMPTS[6])
    settle(pair, future)
    result = future.result()
    assert result.seconds >= 0.05 * result.num_chunks
    assert pair.decode_all() == {rid: colocated_reference[6]}


def test_fault_config_checks_its_fields():
    with pytest.raises(ValueError, match="faults.kill_at must be one of"):
        FaultConfig(kill_at="decode.somewhere")
    with pytest.raises(ValueError, match="faults.times must be >= 1"):
        FaultConfig(kv_drop_chunk=True, times=0)
    faults = Faults(FaultConfig(kv_drop_chunk=True, times=2))
    assert [faults.fire("kv_drop_chunk") for _ in range(3)] == [True, True, False]
    assert not faults.fire("kv_corrupt_chunk")
    faults.at("decode.token")  # no kill configured: returns
