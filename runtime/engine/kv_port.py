"""What the KV transfer may use of an engine's cache: its layout, the cache to pack and unpack
blocks of, and staged copies of layers computed in the current step."""

from __future__ import annotations

import torch

from runtime.config import EngineConfig
from runtime.engine.kv_staging import StagedKV


class KVPort:
    """The narrow view of an engine that a KV sender and receiver work through (the runner
    behind it, CPU or CUDA, stays the engine's own).

    - `num_layers`, `num_kv_heads`, `head_dim`, `dtype`, `block_size`: the cache's layout,
      what a handoff's header carries; `on_gpu`: where the cache lives.
    - `cache`: [layers, 2, blocks, block_size, kv_heads, head_dim], read by the sender's pack
      of a prefilled request's blocks (the engine's `write_kv` fills an import's).
    - `stage(layer, block_table, start, end)`: a copy of one layer's tokens [start, end),
      taken inside the step that computed them (`layer_done`), since the blocks may be
      preempted and reused before the copy is encoded.
    - `model_path`: the weights' directory, for the model fingerprint.
    """

    def __init__(self, runner, config: EngineConfig):
        self._runner = runner
        g = runner.geometry
        self.num_layers, self.num_kv_heads, self.head_dim = (
            g.num_layers,
            g.num_kv_heads,
            g.head_dim,
        )
        self.dtype: torch.dtype = runner.dtype
        self.block_size = config.cache.block_size
        self.model_path = config.model.path

    @property
    def cache(self) -> torch.Tensor:
        return self._runner.kv_cache

    @property
    def on_gpu(self) -> bool:
        return self._runner.kv_cache.is_cuda

    def stage(self, layer: int, block_table: torch.Tensor, start: int, end: int) -> StagedKV:
        return self._runner.stage_kv(layer, block_table, start, end)
