"""Injected faults on a handoff's message stream (`runtime.faults`): delay, drop, corrupt,
stall. Only wrapped around a stream when such a fault is configured."""

from __future__ import annotations

import time
from collections.abc import Iterator

from runtime.faults import Faults
from runtime.kv_transfer._proto import kv_transfer_pb2 as pb


def with_faults(messages: Iterator[bytes], faults: Faults) -> Iterator[bytes]:
    """The serialized messages of one handoff, with the configured faults applied."""
    chunks_seen = False
    for raw in messages:
        if faults.fire("kv_delay_s"):
            time.sleep(faults.config.kv_delay_s)
        msg = pb.HandoffMessage.FromString(raw)
        changed = False
        if msg.chunks and not chunks_seen:
            chunks_seen = True
            if faults.fire("kv_drop_chunk"):
                del msg.chunks[0]
                changed = True
            elif faults.fire("kv_corrupt_chunk"):
                data = bytearray(msg.chunks[0].data)
                data[len(data) // 2] ^= 0x01
                msg.chunks[0].data = bytes(data)
                changed = True
        if msg.HasField("trailer") and faults.fire("kv_stall_s"):
            time.sleep(faults.config.kv_stall_s)
        yield msg.SerializeToString() if changed else raw
