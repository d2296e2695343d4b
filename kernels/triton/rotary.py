"""In-place rotary embedding in Triton: one program per (token, tile of heads).

out[:half] = x1 * cos1 + x2 * sin1 and out[half:] = x2 * cos2 + x1 * sin2 (sin sign-folded),
the engine's x * cos + roll(x, half) * sin. Each product and the sum are rounded to the
input dtype, and the launch disables FMA contraction, so the result is the reference's
bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton.common import check_same_device, pow2


@triton.jit
def _rnd(x, dtype: tl.constexpr):
    return x.to(dtype).to(tl.float32)


@triton.jit
def _rotary_kernel(
    qk_ptr,
    cos_ptr,
    sin_ptr,
    stride_qt,
    stride_qh,
    stride_ct,
    num_heads,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    j = tl.arange(0, BLOCK_HALF)
    j_mask = j < HALF
    mask = (h < num_heads)[:, None] & j_mask[None, :]
    ptr = qk_ptr + t * stride_qt + h[:, None] * stride_qh + j[None, :]
    x1 = tl.load(ptr, mask=mask, other=0.0)
    x2 = tl.load(ptr + HALF, mask=mask, other=0.0)
    dt = x1.dtype
    c1 = tl.load(cos_ptr + t * stride_ct + j, mask=j_mask, other=0.0).to(tl.float32)[None, :]
    c2 = tl.load(cos_ptr + t * stride_ct + HALF + j, mask=j_mask, other=0.0).to(tl.float32)[None, :]
    s1 = tl.load(sin_ptr + t * stride_ct + j, mask=j_mask, other=0.0).to(tl.float32)[None, :]
    s2 = tl.load(sin_ptr + t * stride_ct + HALF + j, mask=j_mask, other=0.0).to(tl.float32)[None, :]
    a = x1.to(tl.float32)
    b = x2.to(tl.float32)
    tl.store(ptr, (_rnd(a * c1, dt) + _rnd(b * s1, dt)).to(dt), mask=mask)
    tl.store(ptr + HALF, (_rnd(b * c2, dt) + _rnd(a * s2, dt)).to(dt), mask=mask)


def apply_rotary_triton_(qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Triton `apply_rotary_` (same contract, shapes and dtypes already validated)."""
    check_same_device(qk, cos, sin)
    t, heads, d = qk.shape
    cos2, sin2 = cos.reshape(t, d), sin.reshape(t, d)
    if qk.stride(-1) != 1 or cos2.stride(-1) != 1 or cos2.stride() != sin2.stride():
        raise ValueError(
            "qk, cos and sin need a contiguous last dimension; cos and sin the same strides"
        )
    if t and heads:
        block_half = pow2(d // 2)
        block_h = max(1, min(pow2(heads), 2048 // block_half))
        _rotary_kernel[(t, triton.cdiv(heads, block_h))](
            qk,
            cos2,
            sin2,
            qk.stride(0),
            qk.stride(1),
            cos2.stride(0),
            heads,
            HALF=d // 2,
            BLOCK_H=block_h,
            BLOCK_HALF=block_half,
            num_warps=4,
            enable_fp_fusion=False,
        )
    return qk
