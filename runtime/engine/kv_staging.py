"""KV handoff staging between the GPU cache and pinned host memory, on a side stream.

The wire code works on host memory. Copies from pageable memory are synchronous and
bounce through a driver buffer; from pinned memory they are DMA transfers that run on
their own stream while the compute stream keeps going. The sender packs a layer's KV on the
GPU and ships it to a pinned buffer while later layers compute (`to_host`); the receiver
lands a chunk in pinned memory and scatters it into its blocks without stalling the running
decode steps (`to_device`). Ordering with the compute stream goes through CUDA events: a
staged read starts after the work already queued (the layer's KV is written), and the next
forward waits for a staged write, but the host never waits unless it asks for the data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from kernels.kv_pack import pack_kv


class StagedKV:
    """Packed KV on the host, possibly still landing: a device-to-host copy in flight (with
    its CUDA event), or already there (`event` None, a CPU engine's copy). `wait()` returns
    the host tensor once it has landed."""

    def __init__(self, host: torch.Tensor, event: torch.cuda.Event | None = None):
        self.host, self.event = host, event

    def ready(self) -> bool:
        return self.event is None or self.event.query()

    def wait(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()
        return self.host


class PinnedKVStager:
    """Moves packed KV [2, T, kv_heads, head_dim] between a CUDA layer cache and pinned host
    buffers on one side stream. Pinned buffers come from torch's caching host allocator, which
    keeps a buffer from reuse until the copies recorded on it have finished."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)

    @contextlib.contextmanager
    def side_stream(self) -> Iterator[None]:
        """Run the enclosed work on the side stream, after everything already queued on the
        compute stream; the compute stream's later work waits for it."""
        compute = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(compute)
        with torch.cuda.stream(self.stream):
            yield
        compute.wait_stream(self.stream)

    def to_host(
        self,
        layer_cache: torch.Tensor,
        block_table: torch.Tensor,
        start: int,
        end: int,
        layout: str = "NHD",
    ) -> StagedKV:
        """Pack tokens [start, end) (`kernels.kv_pack.pack_kv`'s contract) into pinned host
        memory asynchronously; the compute stream does not wait for it."""
        ready = torch.cuda.current_stream(self.device).record_event()
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(ready)
            packed = pack_kv(layer_cache, block_table, start, end, layout)
            host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            host.copy_(packed, non_blocking=True)
            # `packed` belongs to the side stream's memory: the allocator will not hand it
            # to other streams before this copy, queued after its producer, has run.
            return StagedKV(host, self.stream.record_event())

    def pinned(self, like: torch.Tensor) -> torch.Tensor:
        """A pinned host buffer with `like`'s shape and dtype."""
        return torch.empty(like.shape, dtype=like.dtype, pin_memory=True)
