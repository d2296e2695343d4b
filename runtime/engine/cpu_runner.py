"""The model runner on the CPU: prepacked weights, the C++ CPU kernels, KV copies in place."""

from __future__ import annotations

import torch

from kernels.backend import cpu_kernels, default_backend
from kernels.kv_pack import pack_kv, unpack_kv
from runtime.config import CacheConfig, ModelConfig
from runtime.engine.batch_scheduler import ScheduledBatch
from runtime.engine.fused_forward import forward_fused
from runtime.engine.kv_staging import StagedKV
from runtime.engine.model import forward, pack_linear_weights
from runtime.engine.model_runner import ModelRunner
from runtime.engine.sequence import Sequence


class CpuModelRunner(ModelRunner):
    """`ModelRunner` in host memory. float32 keeps transformers' op order (bit-exact greedy
    tokens); half precisions take the fused ops, which dispatch to the C++ CPU kernels
    (kernels.cpu) where they build."""

    def __init__(self, model: ModelConfig, cache: CacheConfig, num_threads: int | None = None):
        super().__init__(model, cache, num_threads)
        # Load the C++ CPU kernels now (the first time on a machine that compiles them,
        # ~30-60 s) so that no request pays for it: every dtype uses their KV copies, and a
        # KV handoff's first chunk would otherwise wait for the build under its deadline.
        if default_backend() != "torch":
            cpu_kernels()
        self.weights = pack_linear_weights(self.weights)
        self._forward = forward if self.dtype is torch.float32 else forward_fused
        self.kv_cache = self._empty_cache(self.num_blocks)

    @torch.inference_mode()
    def execute(
        self, batch: ScheduledBatch, layer_done=None
    ) -> tuple[list[Sequence], torch.Tensor]:
        sampled, (input_ids, positions, meta, logits_idx) = self.prepare(batch)
        logits = self._forward(
            self.weights,
            self.geometry,
            self.kv_cache,
            input_ids,
            positions,
            meta,
            logits_idx,
            layer_done,
        )
        return sampled, logits

    def stage_kv(self, layer: int, block_table: torch.Tensor, start: int, end: int) -> StagedKV:
        """A copy, done on return."""
        return StagedKV(pack_kv(self.kv_cache[layer], block_table, start, end))

    def read_kv(self, block_table: list[int], num_tokens: int, layer: int):
        slots = self._token_slots(block_table, 0, num_tokens)
        layer_cache = self.kv_cache[layer]
        k = layer_cache[0].view(-1, *layer_cache.shape[3:]).index_select(0, slots)
        v = layer_cache[1].view(-1, *layer_cache.shape[3:]).index_select(0, slots)
        return k, v

    def write_kv(
        self,
        block_table: list[int] | torch.Tensor,
        layer_start: int,
        kv: torch.Tensor,
        start: int = 0,
    ) -> None:
        self._check_kv(block_table, layer_start, kv, start)
        if kv.shape[2] == 0:
            return
        layers = self.kv_cache[layer_start : layer_start + kv.shape[0]]
        # One unpack_kv call for every layer of a received chunk: a view of its bytes.
        kv = kv.to(self.dtype) if not kv.is_floating_point() else kv
        unpack_kv(layers, torch.as_tensor(block_table, dtype=torch.long), kv, start)
