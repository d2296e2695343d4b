"""Paged decode attention with GQA in Triton (flash-decoding).

One program per (sequence, KV head, split) handles the whole query group of that KV head, so
each K/V tile is read from the cache once for all the group's query heads. It walks its share
of the sequence's context tile by tile (any cache block size: each token's block comes from the
block table), with an online softmax in float32. With one split the program normalizes and
writes the output; with several (picked so that small batches still fill the GPU) each writes
an unnormalized partial and a second kernel merges the splits. Splits are cut per sequence
from its own context length, so the work stays balanced under CUDA graphs, whose block tables
are as wide as the longest context allowed.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels.attention_inputs import check_decode_inputs
from kernels.triton.common import pow2, sm_count

_MIN_SPLIT_TOKENS = 256  # below this a split's fixed cost (q load, partial write) dominates


@triton.jit
def _decode_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    tables_ptr,
    lens_ptr,
    out_ptr,
    part_ptr,
    ml_ptr,
    scale_log2,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_tb,
    stride_ob,
    stride_oh,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(lens_ptr + b).to(tl.int32)
    split_len = tl.cdiv(tl.cdiv(ctx, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = split * split_len
    hi = tl.minimum(lo + split_len, ctx)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    heads = kvh * GROUP + g
    gd_mask = (g < GROUP)[:, None] & (d < HEAD_DIM)[None, :]
    q = tl.load(
        q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=gd_mask, other=0.0
    )

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        t = start + tl.arange(0, BLOCK_N)
        t_mask = t < hi
        blk = tl.load(tables_ptr + b * stride_tb + t // BLOCK_SIZE, mask=t_mask, other=0)
        rows = blk.to(tl.int64) * stride_kb + (t % BLOCK_SIZE) * stride_kt + kvh * stride_kh
        kv_mask = t_mask[:, None] & (d < HEAD_DIM)[None, :]
        # V is loaded with K, not after the scores: both tiles' latency overlaps.
        k = tl.load(k_ptr + rows[:, None] + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + rows[:, None] + d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        s = tl.where(t_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)  # 0 on the first tile, where m_i is -inf
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    if NUM_SPLITS == 1:
        out = acc / l_i[:, None]
        tl.store(
            out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=gd_mask,
        )
    else:
        # Partials [B, H, NUM_SPLITS, BLOCK_D] and (m, l) [B, H, NUM_SPLITS, 2]; an empty split
        # leaves m = -inf, l = 0, acc = 0, which the merge weighs by exactly 0.
        row = (b * tl.num_programs(1) * GROUP + heads) * NUM_SPLITS + split
        tl.store(part_ptr + row[:, None] * BLOCK_D + d[None, :], acc, mask=gd_mask)
        g_mask = g < GROUP
        tl.store(ml_ptr + row * 2, m_i, mask=g_mask)
        tl.store(ml_ptr + row * 2 + 1, l_i, mask=g_mask)


@triton.jit
def _merge_kernel(
    part_ptr,
    ml_ptr,
    out_ptr,
    stride_ob,
    stride_oh,
    num_heads,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    s_mask = s < NUM_SPLITS
    row = (b * num_heads + h) * NUM_SPLITS + s
    m = tl.load(ml_ptr + row * 2, mask=s_mask, other=float("-inf"))
    denom = tl.load(ml_ptr + row * 2 + 1, mask=s_mask, other=0.0)
    w = tl.exp2(m - tl.max(m, 0))
    w = tl.where(s_mask & (denom > 0), w, 0.0)
    acc = tl.load(part_ptr + row[:, None] * BLOCK_D + d[None, :], mask=s_mask[:, None], other=0.0)
    out = tl.sum(acc * w[:, None], 0) / tl.sum(denom * w, 0)
    tl.store(
        out_ptr + b * stride_ob + h * stride_oh + d,
        out.to(out_ptr.dtype.element_ty),
        mask=d < HEAD_DIM,
    )


def choose_num_splits(q: torch.Tensor, num_kv_heads: int, max_context: int) -> int:
    """Splits per sequence so that about 4 programs per SM run, each over >= 256 tokens."""
    programs = q.shape[0] * num_kv_heads
    wanted = math.ceil(4 * sm_count(q) / max(programs, 1))
    return max(1, min(wanted, math.ceil(max_context / _MIN_SPLIT_TOKENS), 32))


def paged_decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton `paged_decode_attention` (same contract); `out` [batch, heads, dim] is written
    in place when given. Never syncs with the host, so it can be captured in a CUDA graph."""
    check_decode_inputs(q, k_cache, v_cache, block_tables, context_lens, out)
    b, h, d = q.shape
    _, block_size, kvh, _ = k_cache.shape
    out = torch.empty_like(q) if out is None else out
    if b == 0:
        return out
    group, block_d = h // kvh, max(16, pow2(d))
    if num_splits is None:
        num_splits = choose_num_splits(q, kvh, block_tables.shape[1] * block_size)
    if num_splits > 1:
        part = torch.empty(b, h, num_splits, block_d, dtype=torch.float32, device=q.device)
        ml = torch.empty(b, h, num_splits, 2, dtype=torch.float32, device=q.device)
    else:
        part = ml = out  # unused
    # tl.dot wants >= 16 rows, columns and depth on the GPU; padded rows are masked out.
    # Tiles of 64 x 64 or 32 x 128 with 8 warps stay at <= 128 registers (ptxas, sm_90), so
    # two programs fit an SM with both of their K and V tiles in flight.
    block_g, block_n = max(16, pow2(group)), max(16, min(64, 4096 // block_d))
    _decode_kernel[(b, kvh, num_splits)](
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        out,
        part,
        ml,
        scale * math.log2(math.e),
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        GROUP=group,
        BLOCK_G=block_g,
        HEAD_DIM=d,
        BLOCK_D=block_d,
        BLOCK_SIZE=block_size,
        BLOCK_N=block_n,
        NUM_SPLITS=num_splits,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=8,
        enable_fp_fusion=True,
    )
    if num_splits > 1:
        _merge_kernel[(b, h)](
            part,
            ml,
            out,
            out.stride(0),
            out.stride(1),
            h,
            HEAD_DIM=d,
            BLOCK_D=block_d,
            NUM_SPLITS=num_splits,
            BLOCK_S=pow2(num_splits),
            num_warps=1,
            enable_fp_fusion=True,
        )
    return out
