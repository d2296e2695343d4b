"""KV pack (gather) and unpack (scatter) between a paged layer cache and token-major buffers.

One program moves a tile of tokens of k or v: every token finds its block through the block
table, so block-size conversion and the NHD/HND layouts are just different strides. Values
move as same-size integers (bit-exact for every dtype). Callers (`kernels.kv_pack`) validate
shapes and token ranges first; the launchers here add the device and stride checks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton.common import as_bits, check_same_device, pow2

_TILE_ELEMS = 8192  # values per program: enough bytes in flight, no register spills


@triton.jit
def _move_kernel(
    cache_ptr,
    table_ptr,
    buf_ptr,
    start,
    num_tokens,
    stride_kv,
    stride_blk,
    stride_tok,
    stride_head,
    HEADS: tl.constexpr,
    DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
    TO_CACHE: tl.constexpr,
):
    kv = tl.program_id(1).to(tl.int64)  # k/v planes of a big cache pass 2^31 elements
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    c = tl.arange(0, BLOCK_C)  # column = head * DIM + d of a token-major row
    t_mask = t < num_tokens
    mask = t_mask[:, None] & (c < HEADS * DIM)[None, :]
    p = start + t
    blk = tl.load(table_ptr + p // BLOCK_SIZE, mask=t_mask, other=0).to(tl.int64)
    rows = kv * stride_kv + blk * stride_blk + (p % BLOCK_SIZE) * stride_tok
    cache_off = rows[:, None] + ((c // DIM) * stride_head + c % DIM)[None, :]
    buf_off = (kv * num_tokens + t)[:, None] * (HEADS * DIM) + c[None, :]
    if TO_CACHE:
        tl.store(cache_ptr + cache_off, tl.load(buf_ptr + buf_off, mask=mask), mask=mask)
    else:
        tl.store(buf_ptr + buf_off, tl.load(cache_ptr + cache_off, mask=mask), mask=mask)


def _launch(layer_cache, block_table, buf, start, layout, to_cache) -> None:
    check_same_device(layer_cache, buf)
    if not layer_cache.is_contiguous() or not buf.is_contiguous():
        raise ValueError("layer_cache and the token-major buffer must be contiguous")
    if buf.dtype != layer_cache.dtype:
        raise ValueError(f"buffer dtype {buf.dtype} differs from the cache's {layer_cache.dtype}")
    _, _, a, b, dim = layer_cache.shape
    bs, heads = (a, b) if layout == "NHD" else (b, a)
    num_tokens = buf.shape[1]
    if buf.shape != (2, num_tokens, heads, dim):
        raise ValueError(f"buffer must be [2, T, {heads}, {dim}], got {tuple(buf.shape)}")
    if num_tokens == 0:
        return
    table = block_table.to(layer_cache.device, non_blocking=True)
    s = layer_cache.stride()
    stride_tok, stride_head = (s[2], s[3]) if layout == "NHD" else (s[3], s[2])
    block_c = pow2(heads * dim)
    block_t = max(1, min(pow2(num_tokens), _TILE_ELEMS // block_c))
    grid = (triton.cdiv(num_tokens, block_t), 2)
    _move_kernel[grid](
        as_bits(layer_cache),
        table,
        as_bits(buf),
        start,
        num_tokens,
        s[0],
        s[1],
        stride_tok,
        stride_head,
        HEADS=heads,
        DIM=dim,
        BLOCK_SIZE=bs,
        BLOCK_T=block_t,
        BLOCK_C=block_c,
        TO_CACHE=to_cache,
        num_warps=4,
        enable_fp_fusion=True,
    )


def pack_kv_triton(
    layer_cache: torch.Tensor,
    block_table: torch.Tensor,
    start: int,
    end: int,
    layout: str = "NHD",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton `pack_kv` (same contract, inputs already validated); writes into `out`
    [2, end - start, kv_heads, head_dim] when given."""
    _, _, a, b, dim = layer_cache.shape
    heads = b if layout == "NHD" else a
    if out is None:
        out = layer_cache.new_empty(2, end - start, heads, dim)
    _launch(layer_cache, block_table, out, start, layout, to_cache=False)
    return out


def unpack_kv_triton(
    layer_cache: torch.Tensor,
    block_table: torch.Tensor,
    data: torch.Tensor,
    start: int,
    layout: str = "NHD",
) -> None:
    """Triton `unpack_kv` (same contract, inputs already validated)."""
    data = data.to(device=layer_cache.device, dtype=layer_cache.dtype).contiguous()
    _launch(layer_cache, block_table, data, start, layout, to_cache=True)
