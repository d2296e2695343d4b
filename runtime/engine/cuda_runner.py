"""The model runner on a CUDA GPU: fused Triton forward, CUDA-graph decode, pinned KV staging.

A sibling of `CpuModelRunner` under `ModelRunner` (the engine cannot tell them apart):
`execute`, `read_kv` and `write_kv` take and return what the CPU runner does, so the
scheduler, sampler and KV handoff code stay device-agnostic. Differences: weights and KV cache
live on the GPU, the forward is `forward_fused`, decode-only steps replay CUDA graphs, and
handoff KV moves through pinned host memory on a side stream.
"""

from __future__ import annotations

import dataclasses

import torch

from kernels.backend import use_triton
from runtime.config import CacheConfig, ModelConfig
from runtime.engine.batch_scheduler import ScheduledBatch
from runtime.engine.cuda_graphs import CudaGraphDecoder
from runtime.engine.fused_forward import forward_fused
from runtime.engine.kv_staging import PinnedKVStager, StagedKV
from runtime.engine.model import AttentionMetadata, ModelWeights
from runtime.engine.model_runner import ModelRunner
from runtime.engine.sequence import Sequence


def weights_to(w: ModelWeights, device: torch.device) -> ModelWeights:
    """A copy of the weights on `device`; tensors shared on the host (tied embeddings) stay
    shared."""
    moved: dict[int, torch.Tensor] = {}

    def to(t):
        if not isinstance(t, torch.Tensor):
            return t
        if id(t) not in moved:
            moved[id(t)] = t.to(device)
        return moved[id(t)]

    def each(obj):
        return dataclasses.replace(
            obj, **{f.name: to(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        )

    return dataclasses.replace(each(w), layers=[each(lw) for lw in w.layers])


class CudaModelRunner(ModelRunner):
    """`ModelRunner` on `device`. `max_num_seqs` bounds the decode batch CUDA graphs cover
    (larger batches and prefills run eagerly); `cuda_graphs=False` runs everything eagerly.
    Graphs need Triton decode attention; with the torch backend the runner stays eager."""

    def __init__(
        self,
        model: ModelConfig,
        cache: CacheConfig,
        num_threads: int | None = None,
        device: str | torch.device = "cuda",
        max_num_seqs: int = 256,
        cuda_graphs: bool = True,
    ):
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"CudaModelRunner needs a CUDA device, got {self.device}")
        super().__init__(model, cache, num_threads)
        g = self.geometry
        self.weights = weights_to(self.weights, self.device)
        # One block more than the block manager hands out: the graphs' padding rows write there.
        self.kv_cache = self._empty_cache(self.num_blocks + 1, self.device)
        self.stager = PinnedKVStager(self.device)
        self.graphs = None
        max_len = min(model.max_model_len or g.max_position_embeddings, g.max_position_embeddings)
        if cuda_graphs and use_triton(self.kv_cache):
            self.graphs = CudaGraphDecoder(
                forward_fused,
                self.weights,
                g,
                self.kv_cache,
                max_num_seqs,
                -(-max_len // cache.block_size),
                scratch_block=self.num_blocks,
            )

    def _on_device(self, meta: AttentionMetadata) -> AttentionMetadata:
        def to(t):
            return None if t is None else t.to(self.device, non_blocking=True)

        spans = tuple(dataclasses.replace(s, block_table=to(s.block_table)) for s in meta.prefills)
        return dataclasses.replace(
            meta,
            slot_mapping=to(meta.slot_mapping),
            prefills=spans,
            decode_block_tables=to(meta.decode_block_tables),
            decode_context_lens=to(meta.decode_context_lens),
        )

    @torch.inference_mode()
    def execute(
        self, batch: ScheduledBatch, layer_done=None
    ) -> tuple[list[Sequence], torch.Tensor]:
        sampled, (input_ids, positions, meta, logits_idx) = self.prepare(batch)
        decode_only = not meta.prefills and meta.num_decode > 0
        if (
            decode_only
            and self.graphs is not None
            and self.graphs.can_run(meta.num_decode, meta.decode_block_tables.shape[1])
        ):
            logits = self.graphs.run(
                input_ids,
                positions,
                meta.slot_mapping,
                meta.decode_block_tables,
                meta.decode_context_lens,
            )
            if layer_done is not None:  # no prompt KV in a decode step; keep the contract
                for i in range(self.geometry.num_layers):
                    layer_done(i)
            return sampled, logits.index_select(0, logits_idx.to(self.device))
        logits = forward_fused(
            self.weights,
            self.geometry,
            self.kv_cache,
            input_ids.to(self.device),
            positions.to(self.device),
            self._on_device(meta),
            logits_idx.to(self.device),
            layer_done,
        )
        return sampled, logits

    def stage_kv(self, layer: int, block_table: torch.Tensor, start: int, end: int) -> StagedKV:
        """Start copying tokens [start, end) of one layer to pinned host memory, packed
        [2, T, kv_heads, head_dim]; returns at once (call from the forward's `layer_done`, and
        `wait()` on the sending thread)."""
        return self.stager.to_host(self.kv_cache[layer], block_table, start, end)

    def read_kv(self, block_table: list[int], num_tokens: int, layer: int):
        """(k, v) of one layer for tokens [0, num_tokens), each [num_tokens, kv_heads, dim],
        in pinned host memory."""
        kv = self.stage_kv(layer, torch.tensor(block_table, dtype=torch.long), 0, num_tokens).wait()
        return kv[0], kv[1]

    def write_kv(
        self,
        block_table: list[int] | torch.Tensor,
        layer_start: int,
        kv: torch.Tensor,
        start: int = 0,
    ) -> None:
        """Host KV goes up through pinned memory on the side stream, and the next forward
        waits for it on the GPU, not on the host."""
        self._check_kv(block_table, layer_start, kv, start)
        if kv.is_cuda:
            self._scatter(block_table, layer_start, kv, start)
            return
        host = torch.empty(kv.shape, dtype=kv.dtype, pin_memory=True)
        host.copy_(kv)
        with self.stager.side_stream():
            self._scatter(block_table, layer_start, host.to(self.device, non_blocking=True), start)

    def _scatter(self, block_table, layer_start: int, kv: torch.Tensor, start: int) -> None:
        # index_copy_ stays on the current stream; nothing here waits on the host.
        slots = self._token_slots(block_table, start, kv.shape[2]).to(self.device)
        kv = kv.to(self.device, self.dtype)
        layers = self.kv_cache[layer_start : layer_start + kv.shape[0]]
        for layer_cache, layer_kv in zip(layers, kv):
            for i in range(2):
                layer_cache[i].view(-1, *layer_cache.shape[3:]).index_copy_(0, slots, layer_kv[i])
