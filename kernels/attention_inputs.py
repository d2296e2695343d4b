"""The contract of paged decode attention's inputs, shared by its dispatch and its Triton
kernel (each checks before it launches)."""

from __future__ import annotations

import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_decode_inputs(q, k_cache, v_cache, block_tables, context_lens, out) -> None:
    """Raises ValueError unless the inputs fit `paged_decode_attention`'s contract."""
    if q.dim() != 3 or block_tables.dim() != 2 or block_tables.shape[0] != q.shape[0]:
        raise ValueError(
            f"bad shapes: q {tuple(q.shape)}, block_tables {tuple(block_tables.shape)}"
        )
    devices = {t.device for t in (q, k_cache, v_cache, block_tables, context_lens)}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    if q.dtype not in DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(
            f"q, k_cache, v_cache must share one of {DTYPES}, got {q.dtype}, "
            f"{k_cache.dtype}, {v_cache.dtype}"
        )
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        raise ValueError(
            "k_cache and v_cache must be [num_blocks, block_size, kv_heads, "
            f"head_dim] with equal strides, got {tuple(k_cache.shape)}, "
            f"{tuple(v_cache.shape)}"
        )
    b, h, d = q.shape
    kvh = k_cache.shape[2]
    if k_cache.shape[3] != d or h % kvh:
        raise ValueError(
            f"q {tuple(q.shape)} does not fit a cache of {kvh} kv heads of dim "
            f"{k_cache.shape[3]} (heads must be a multiple of kv heads)"
        )
    if q.stride(-1) != 1 or k_cache.stride(-1) != 1:
        raise ValueError("q and the caches need a contiguous last (head_dim) dimension")
    if block_tables.dtype not in (torch.int32, torch.int64) or context_lens.dtype not in (
        torch.int32,
        torch.int64,
    ):
        raise ValueError(
            f"block_tables and context_lens must be int32 or int64, got "
            f"{block_tables.dtype}, {context_lens.dtype}"
        )
    if context_lens.shape != (b,):
        raise ValueError(f"context_lens must be [{b}], got {tuple(context_lens.shape)}")
    if out is not None and (
        out.shape != q.shape
        or out.dtype != q.dtype
        or out.device != q.device
        or out.stride(-1) != 1
    ):
        raise ValueError("out must match q's shape, dtype and device, last dim contiguous")
