"""The one place that picks a model runner for a device."""

from __future__ import annotations

import torch

from runtime.config import CacheConfig, ModelConfig
from runtime.engine.cpu_runner import CpuModelRunner
from runtime.engine.cuda_runner import CudaModelRunner
from runtime.engine.model_runner import ModelRunner


def make_runner(
    model: ModelConfig, cache: CacheConfig, num_threads: int | None = None, max_num_seqs: int = 256
) -> ModelRunner:
    """The runner for `model.device`: `CpuModelRunner` for "cpu", `CudaModelRunner` for
    "cuda" or "cuda:N" (CUDA graphs unless `model.enforce_eager`); `ModelConfig` has
    checked the device's name."""
    if torch.device(model.device).type == "cpu":
        return CpuModelRunner(model, cache, num_threads)
    return CudaModelRunner(
        model,
        cache,
        num_threads,
        device=model.device,
        max_num_seqs=max_num_seqs,
        cuda_graphs=not model.enforce_eager,
    )
