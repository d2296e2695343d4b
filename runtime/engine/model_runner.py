"""Owns the weights and the KV cache tensors; turns a scheduled batch into logits."""
from __future__ import annotations

import os

import torch

from kernels.backend import cpu_kernels, default_backend
from kernels.kv_pack import pack_kv, unpack_kv
from runtime.config import CacheConfig, ModelConfig
from runtime.engine.batch_scheduler import ScheduledBatch
from runtime.engine.fused_forward import forward_fused
from runtime.engine.kv_staging import StagedKV
from runtime.engine.model import AttentionMetadata, PrefillSpan, forward, pack_linear_weights
from runtime.engine.sequence import Sequence
from runtime.engine.weights import DTYPES, geometry_of, load_hf_config, load_weights


class ModelRunner:
    """The torch side of the engine: weights, the paged KV cache, one forward per step.

    KV cache layout: [num_layers, 2 (k, v), num_blocks, block_size, num_kv_heads, head_dim] in
    the model dtype. `read_kv` takes one layer of one sequence's KV out as contiguous [num_tokens,
    num_kv_heads, head_dim] tensors; `write_kv` puts a layer range's [layers, 2, num_tokens,
    num_kv_heads, head_dim] in (a received chunk).
    """

    def __init__(self, model: ModelConfig, cache: CacheConfig, num_threads: int | None = None):
        torch.set_num_threads(num_threads or os.cpu_count() or 1)
        self.hf_config = load_hf_config(model.path)
        self.geometry = geometry_of(self.hf_config)
        self.dtype = DTYPES[model.dtype]
        self.weights = load_weights(model.path, self.hf_config, model.dtype)
        if model.device == "cpu":
            # Load the C++ CPU kernels now (the first time on a machine that compiles them,
            # ~30-60 s) so that no request pays for it: every dtype uses their KV copies, and
            # a KV handoff's first chunk would otherwise wait for the build under its deadline.
            if default_backend() != "torch":
                cpu_kernels()
            self.weights = pack_linear_weights(self.weights)
        # float32 keeps transformers' op order (bit-exact greedy tokens); half precisions take
        # the fused ops, which dispatch to the C++ CPU kernels (kernels.cpu) where they build.
        self._forward = forward if self.dtype is torch.float32 else forward_fused
        self.block_size = cache.block_size
        g = self.geometry
        elem = torch.tensor([], dtype=self.dtype).element_size()
        bytes_per_block = g.kv_bytes_per_token * elem * cache.block_size
        self.num_blocks = cache.num_blocks or max(1, int(cache.memory_gib * 2**30) // bytes_per_block)
        self.kv_cache = torch.zeros(g.num_layers, 2, self.num_blocks, cache.block_size,
                                    g.num_kv_heads, g.head_dim, dtype=self.dtype)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, layer_done=None) -> tuple[list[Sequence], torch.Tensor]:
        """Compute the batch's tokens; returns the sequences that reached their end this step
        (in batch order) and their next-token logits [n, vocab] in float32."""
        sampled, (input_ids, positions, meta, logits_idx) = self.prepare(batch)
        logits = self._forward(self.weights, self.geometry, self.kv_cache, input_ids, positions,
                               meta, logits_idx, layer_done)
        return sampled, logits

    def prepare(self, batch: ScheduledBatch):
        """The batch as the forward's inputs, CPU tensors: (the sequences that reached their
        end, in batch order; (input_ids, positions, AttentionMetadata, logits_indices))."""
        bs = self.block_size
        order = sorted(range(len(batch.seqs)), key=lambda i: batch.num_new_tokens[i] != 1)
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        decode_tables, decode_lens, spans = [], [], []
        last_token_row: dict[int, int] = {}
        for i in order:
            seq, n = batch.seqs[i], batch.num_new_tokens[i]
            start = seq.num_computed_tokens
            row0 = len(input_ids)
            input_ids += seq.token_ids[start:start + n]
            pos = range(start, start + n)
            positions += pos
            table = seq.block_table
            slots += [table[p // bs] * bs + p % bs for p in pos]
            if n == 1:
                decode_tables.append(table)
                decode_lens.append(start + 1)
            else:
                spans.append(PrefillSpan(row0, n, start, torch.tensor(table, dtype=torch.long)))
            if start + n == seq.num_tokens:
                last_token_row[i] = row0 + n - 1
        meta = AttentionMetadata(slot_mapping=torch.tensor(slots, dtype=torch.long),
                                 num_decode=len(decode_tables), prefills=tuple(spans))
        if decode_tables:
            width = max(len(t) for t in decode_tables)
            meta.decode_block_tables = torch.tensor(
                [t + [t[0]] * (width - len(t)) for t in decode_tables], dtype=torch.long)
            meta.decode_context_lens = torch.tensor(decode_lens, dtype=torch.long)
        sampled = [i for i in range(len(batch.seqs)) if i in last_token_row]
        logits_idx = torch.tensor([last_token_row[i] for i in sampled], dtype=torch.long)
        return [batch.seqs[i] for i in sampled], (torch.tensor(input_ids, dtype=torch.long),
                                                  torch.tensor(positions, dtype=torch.long),
                                                  meta, logits_idx)

    def _token_slots(self, block_table: list[int], start: int, num_tokens: int) -> torch.Tensor:
        bs = self.block_size
        pos = torch.arange(start, start + num_tokens)
        table = torch.as_tensor(block_table, dtype=torch.long, device="cpu")
        return table[pos // bs] * bs + pos % bs

    def stage_kv(self, layer: int, block_table: torch.Tensor, start: int, end: int) -> StagedKV:
        """Tokens [start, end) of one layer, packed [2, T, kv_heads, head_dim] into host memory
        (`CudaModelRunner` starts the copy and returns at once; here it is done on return).
        The copy is the caller's: the blocks may be reused once it is taken."""
        return StagedKV(pack_kv(self.kv_cache[layer], block_table, start, end))

    def read_kv(self, block_table: list[int], num_tokens: int, layer: int):
        """(k, v) of one layer for tokens [0, num_tokens): each [num_tokens, kv_heads, dim]."""
        slots = self._token_slots(block_table, 0, num_tokens)
        layer_cache = self.kv_cache[layer]
        k = layer_cache[0].view(-1, *layer_cache.shape[3:]).index_select(0, slots)
        v = layer_cache[1].view(-1, *layer_cache.shape[3:]).index_select(0, slots)
        return k, v

    def write_kv(self, block_table: list[int] | torch.Tensor, layer_start: int,
                 kv: torch.Tensor, start: int = 0) -> None:
        """Place KV [L, 2 (k, v), T, num_kv_heads, head_dim] of layers [layer_start,
        layer_start + L) for tokens [start, start + T) into the sequence's blocks
        (`block_table`: block ids, a list or a 1-D int64 CPU tensor)."""
        g = self.geometry
        if kv.dim() != 5 or kv.shape[1] != 2 or tuple(kv.shape[3:]) != (g.num_kv_heads,
                                                                          g.head_dim):
            raise ValueError(f"KV must be [layers, 2, tokens, {g.num_kv_heads}, {g.head_dim}], "
                             f"got {tuple(kv.shape)}")
        if not 0 <= layer_start <= layer_start + kv.shape[0] <= g.num_layers:
            raise ValueError(f"layers [{layer_start}, {layer_start + kv.shape[0]}) out of range "
                             f"[0, {g.num_layers})")
        layers = self.kv_cache[layer_start:layer_start + kv.shape[0]]
        if self.kv_cache.is_cuda:   # index_copy_ stays on the stream; unpack_kv checks on the host
            slots = self._token_slots(block_table, start, kv.shape[2]).to(self.kv_cache.device)
            kv = kv.to(self.kv_cache.device, self.dtype)
            for layer_cache, layer_kv in zip(layers, kv):
                for i in range(2):
                    layer_cache[i].view(-1, *layer_cache.shape[3:]).index_copy_(
                        0, slots, layer_kv[i])
            return
        if kv.shape[2] == 0:
            return
        if start < 0 or start + kv.shape[2] > len(block_table) * self.block_size:
            raise IndexError(f"KV tokens [{start}, {start + kv.shape[2]}) outside the "
                             f"{len(block_table)} blocks of the sequence")
        # One unpack_kv call for every layer of a received chunk: a view of its bytes.
        kv = kv.to(self.dtype) if not kv.is_floating_point() else kv
        unpack_kv(layers, torch.as_tensor(block_table, dtype=torch.long), kv, start)
