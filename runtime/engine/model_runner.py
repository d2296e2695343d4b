"""What every model runner shares: the model's config and host weights, the cache's size, and
turning a scheduled batch into the forward's inputs. The device runners (`cpu_runner`,
`cuda_runner`) are siblings below it; `runners.make_runner` picks one."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import torch

from runtime.config import CacheConfig, ModelConfig
from runtime.engine.batch_scheduler import ScheduledBatch
from runtime.engine.kv_staging import StagedKV
from runtime.engine.model import AttentionMetadata, PrefillSpan
from runtime.engine.prompt_logprobs import prompt_logprob_spans
from runtime.engine.sequence import Sequence
from runtime.engine.weights import DTYPES, geometry_of, load_hf_config, load_weights


class ModelRunner(ABC):
    """The torch side of the engine: weights, the paged KV cache, one forward per step. The
    engine cannot tell the device runners apart: each takes and returns the same host-side
    values.

    KV cache layout: [num_layers, 2 (k, v), num_blocks (+ spare), block_size, num_kv_heads,
    head_dim] in the model dtype; `num_blocks` is what the block manager may hand out.
    """

    kv_cache: torch.Tensor

    def __init__(self, model: ModelConfig, cache: CacheConfig, num_threads: int | None = None):
        torch.set_num_threads(num_threads or os.cpu_count() or 1)
        self.hf_config = load_hf_config(model.path)
        self.geometry = geometry_of(self.hf_config)
        self.dtype = DTYPES[model.dtype]
        self.weights = load_weights(model.path, self.hf_config, model.dtype)
        self.block_size = cache.block_size
        bytes_per_block = self.geometry.kv_bytes_per_token * self.dtype.itemsize * cache.block_size
        self.num_blocks = cache.num_blocks or max(
            1, int(cache.memory_gib * 2**30) // bytes_per_block
        )

    def _empty_cache(self, num_blocks: int, device: torch.device | str = "cpu") -> torch.Tensor:
        g = self.geometry
        return torch.zeros(
            g.num_layers,
            2,
            num_blocks,
            self.block_size,
            g.num_kv_heads,
            g.head_dim,
            dtype=self.dtype,
            device=device,
        )

    @abstractmethod
    def execute(
        self, batch: ScheduledBatch, layer_done=None
    ) -> tuple[list[Sequence], torch.Tensor]:
        """Compute the batch's tokens; returns the sequences that reached their end this step
        (in batch order) and their next-token logits [n, vocab] in float32. `layer_done(i)`,
        if given, is called once layer i's KV for the batch is in the cache."""

    @abstractmethod
    def stage_kv(self, layer: int, block_table: torch.Tensor, start: int, end: int) -> StagedKV:
        """Tokens [start, end) of one layer, packed [2, T, kv_heads, head_dim] into host
        memory; `wait()` on the result gives the tensor. The copy is the caller's: the blocks
        may be reused once it is taken."""

    @abstractmethod
    def read_kv(self, block_table: list[int], num_tokens: int, layer: int):
        """(k, v) of one layer for tokens [0, num_tokens): each [num_tokens, kv_heads, dim] on
        the host."""

    @abstractmethod
    def write_kv(
        self,
        block_table: list[int] | torch.Tensor,
        layer_start: int,
        kv: torch.Tensor,
        start: int = 0,
    ) -> None:
        """Place KV [L, 2 (k, v), T, num_kv_heads, head_dim] of layers [layer_start,
        layer_start + L) for tokens [start, start + T) into the sequence's blocks
        (`block_table`: block ids, a list or a 1-D int64 CPU tensor). Raises ValueError on a
        wrong shape or layer range, IndexError on tokens outside the blocks."""

    def _check_kv(self, block_table, layer_start: int, kv: torch.Tensor, start: int) -> None:
        g = self.geometry
        if kv.dim() != 5 or kv.shape[1] != 2 or tuple(kv.shape[3:]) != (g.num_kv_heads, g.head_dim):
            raise ValueError(
                f"KV must be [layers, 2, tokens, {g.num_kv_heads}, {g.head_dim}], "
                f"got {tuple(kv.shape)}"
            )
        if not 0 <= layer_start <= layer_start + kv.shape[0] <= g.num_layers:
            raise ValueError(
                f"layers [{layer_start}, {layer_start + kv.shape[0]}) out of range "
                f"[0, {g.num_layers})"
            )
        if kv.shape[2] and (start < 0 or start + kv.shape[2] > len(block_table) * self.block_size):
            raise IndexError(
                f"KV tokens [{start}, {start + kv.shape[2]}) outside the "
                f"{len(block_table)} blocks of the sequence"
            )

    def _token_slots(self, block_table, start: int, num_tokens: int) -> torch.Tensor:
        bs = self.block_size
        pos = torch.arange(start, start + num_tokens)
        table = torch.as_tensor(block_table, dtype=torch.long, device="cpu")
        return table[pos // bs] * bs + pos % bs

    def prepare(self, batch: ScheduledBatch):
        """The batch as the forward's inputs, CPU tensors: (the sequences that reached their
        end, in batch order; (input_ids, positions, AttentionMetadata, logits_indices))."""
        bs = self.block_size
        order = sorted(range(len(batch.seqs)), key=lambda i: batch.num_new_tokens[i] != 1)
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        decode_tables: list[list[int]] = []
        decode_lens: list[int] = []
        spans: list[PrefillSpan] = []
        last_token_row: dict[int, int] = {}
        first_rows = [0] * len(batch.seqs)
        for i in order:
            seq, n = batch.seqs[i], batch.num_new_tokens[i]
            start = seq.num_computed_tokens
            row0 = first_rows[i] = len(input_ids)
            input_ids += seq.token_ids[start : start + n]
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
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long),
            num_decode=len(decode_tables),
            prefills=tuple(spans),
        )
        if decode_tables:
            width = max(len(t) for t in decode_tables)
            meta.decode_block_tables = torch.tensor(
                [t + [t[0]] * (width - len(t)) for t in decode_tables], dtype=torch.long
            )
            meta.decode_context_lens = torch.tensor(decode_lens, dtype=torch.long)
        sampled = [i for i in range(len(batch.seqs)) if i in last_token_row]
        rows = [last_token_row[i] for i in sampled]
        for span in prompt_logprob_spans(batch, first_rows):
            rows += range(span.row, span.row + span.end - span.start)
        logits_idx = torch.tensor(rows, dtype=torch.long)
        return [batch.seqs[i] for i in sampled], (
            torch.tensor(input_ids, dtype=torch.long),
            torch.tensor(positions, dtype=torch.long),
            meta,
            logits_idx,
        )
