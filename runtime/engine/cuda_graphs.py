"""CUDA graphs for decode steps: one graph per batch-size bucket, all in one memory pool.

A decode step of a small model is a few hundred short kernels; launching them one by one from
Python costs more than running them. Each bucket's step is captured once and replayed: its
inputs live in static buffers, rows past the real batch are a dummy sequence whose KV lands
in a scratch block that no sequence owns, and the largest bucket is captured first so the
smaller ones reuse its memory in the shared pool. Needs a forward that never syncs with the
host (`forward_fused` with Triton decode attention).
"""

from __future__ import annotations

import bisect

import torch

from runtime.engine.model import AttentionMetadata

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


class CudaGraphDecoder:
    """Replays captured decode steps of `forward_fn(weights, geometry, kv_cache, input_ids,
    positions, meta, logits_indices)` for up to `max_batch` sequences of up to
    `max_blocks_per_seq` blocks. `scratch_block` is a cache block no sequence ever gets."""

    def __init__(
        self,
        forward_fn,
        weights,
        geometry,
        kv_cache: torch.Tensor,
        max_batch: int,
        max_blocks_per_seq: int,
        scratch_block: int,
    ):
        self.forward_fn, self.weights, self.geometry = forward_fn, weights, geometry
        self.kv_cache = kv_cache
        self.buckets = tuple(b for b in BUCKETS if b < max_batch) + (max_batch,)
        dev, n = kv_cache.device, max_batch
        block_size = kv_cache.shape[3]
        self.scratch_block, self.scratch_slot = scratch_block, scratch_block * block_size
        self.input_ids = torch.zeros(n, dtype=torch.long, device=dev)
        self.positions = torch.zeros(n, dtype=torch.long, device=dev)
        self.slots = torch.full((n,), self.scratch_slot, dtype=torch.long, device=dev)
        self.tables = torch.full(
            (n, max_blocks_per_seq), scratch_block, dtype=torch.int32, device=dev
        )
        self.lens = torch.ones(n, dtype=torch.int32, device=dev)
        self.rows = torch.arange(n, device=dev)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool: tuple[int, int] | None = None  # the graphs' shared memory pool

    def _step(self, b: int) -> torch.Tensor:
        meta = AttentionMetadata(
            slot_mapping=self.slots[:b],
            num_decode=b,
            decode_block_tables=self.tables[:b],
            decode_context_lens=self.lens[:b],
        )
        return self.forward_fn(
            self.weights,
            self.geometry,
            self.kv_cache,
            self.input_ids[:b],
            self.positions[:b],
            meta,
            self.rows[:b],
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket (padding rows only: no sequence's KV is touched)."""
        self.pool = torch.cuda.graph_pool_handle()
        for b in reversed(self.buckets):
            # Warm up outside the capture: Triton compiles, cuBLAS picks its kernels.
            side = torch.cuda.Stream(self.kv_cache.device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._step(b)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                logits = self._step(b)
            self.graphs[b] = (graph, logits)
        torch.cuda.synchronize()

    def can_run(self, batch: int, table_width: int) -> bool:
        return 0 < batch <= self.buckets[-1] and table_width <= self.tables.shape[1]

    def bucket(self, batch: int) -> int:
        return self.buckets[bisect.bisect_left(self.buckets, batch)]

    @torch.inference_mode()
    def run(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
    ) -> torch.Tensor:
        """One decode step of n sequences (inputs on any device): logits [n, vocab], a view
        into the graph's memory that the next replay overwrites."""
        if not self.graphs:
            self.capture()
        n, width = block_tables.shape
        b = self.bucket(n)
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slots[:n].copy_(slots, non_blocking=True)
        # Entries past a row's context are never read, so stale ones may stay.
        self.tables[:n, :width].copy_(block_tables, non_blocking=True)
        self.lens[:n].copy_(context_lens, non_blocking=True)
        if b > n:  # padding rows: one token of context in the scratch block
            self.input_ids[n:b].zero_()
            self.positions[n:b].zero_()
            self.slots[n:b].fill_(self.scratch_slot)
            self.tables[n:b, 0].fill_(self.scratch_block)
            self.lens[n:b].fill_(1)
        graph, logits = self.graphs[b]
        graph.replay()
        return logits[:n]
