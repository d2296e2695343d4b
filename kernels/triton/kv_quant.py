"""int8 / fp8 (e4m3fn) wire quantization with per-(group, head) scales in Triton.

Bit-for-bit the arithmetic of `kernels.kv_quant`'s reference: scale = absmax / qmax and
x / scale as IEEE float32 divisions (`div_rn`: Triton's `/` is approximate on the GPU), int8
rounds half to even, fp8 is clamped to +-448 and rounded to nearest even. float8 values are
encoded and decoded with integer bit arithmetic rather than Triton's casts: the interpreter's
fp8 cast rounds wrongly, and bit arithmetic also runs on GPUs without fp8 conversions.
One program handles one (group, head): a pass for the absmax, a pass to quantize. FMA
contraction is off so that every operation rounds exactly as the reference's does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton.common import check_same_device, pow2

_QMAX = {"int8": 127.0, "fp8": 448.0}
_ROUND = tl.constexpr(12582912.0)  # 1.5 * 2^23: x + _ROUND - _ROUND rounds |x| < 2^22 half to even


@triton.jit
def _e4m3_bits(y):
    """float32 y, |y| <= 448, to float8_e4m3fn bits (uint8), round to nearest even."""
    bits = y.to(tl.uint32, bitcast=True)
    sign = (bits >> 31) << 7
    mag = bits & 0x7FFFFFFF
    # Normals (|y| >= 2^-6): keep 3 of 23 mantissa bits, round to nearest even; a carry
    # into the exponent is the correct next binade. Exponent bias 127 -> 7.
    up = mag + 0x7FFFF + ((mag >> 20) & 1)
    normal = ((up >> 23) - 120) << 3 | ((up >> 20) & 7)
    # Subnormals: multiples of 2^-9 (the count 8 is exactly the smallest normal's bits).
    tiny = ((tl.abs(y) * 512.0 + _ROUND) - _ROUND).to(tl.uint32)
    return (sign | tl.where(mag >= 0x3C800000, normal, tiny)).to(tl.uint8)


@triton.jit
def _e4m3_value(b):
    """float8_e4m3fn bits (uint8, finite) to float32, exactly."""
    b = b.to(tl.uint32)
    e = (b >> 3) & 15
    m = b & 7
    normal = ((e + 120) << 23 | m << 20).to(tl.float32, bitcast=True)
    mag = tl.where(e == 0, m.to(tl.float32) * 0.001953125, normal)
    # The sign goes on as a bit: compiled for a GPU, `-mag` of a zero came out +0.0, so a
    # negative zero (0x80) did not round-trip.
    return (mag.to(tl.uint32, bitcast=True) | (b >> 7) << 31).to(tl.float32, bitcast=True)


@triton.jit
def _quantize_kernel(
    x_ptr,
    q_ptr,
    scale_ptr,
    num_tokens,
    stride_xt,
    stride_xh,
    stride_qt,
    stride_qh,
    qmax,
    GROUP: tl.constexpr,
    DIM: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FP8: tl.constexpr,
):
    g = tl.program_id(0)
    h = tl.program_id(1)
    heads = tl.num_programs(1)
    d = tl.arange(0, BLOCK_D)
    absmax = tl.zeros([BLOCK_T], tl.float32)
    for t0 in range(0, GROUP, BLOCK_T):
        i = t0 + tl.arange(0, BLOCK_T)
        t = g * GROUP + i
        mask = ((i < GROUP) & (t < num_tokens))[:, None] & (d < DIM)[None, :]
        x = tl.load(
            x_ptr + t.to(tl.int64)[:, None] * stride_xt + h * stride_xh + d[None, :],
            mask=mask,
            other=0.0,
        ).to(tl.float32)
        absmax = tl.maximum(absmax, tl.max(tl.abs(x), 1))
    scale = tl.div_rn(tl.max(absmax, 0), qmax)
    tl.store(scale_ptr + g * heads + h, scale)
    safe = tl.where(scale > 0, scale, 1.0)  # an all-zero group keeps scale 0, divides by 1
    for t0 in range(0, GROUP, BLOCK_T):
        i = t0 + tl.arange(0, BLOCK_T)
        t = g * GROUP + i
        mask = ((i < GROUP) & (t < num_tokens))[:, None] & (d < DIM)[None, :]
        x = tl.load(
            x_ptr + t.to(tl.int64)[:, None] * stride_xt + h * stride_xh + d[None, :],
            mask=mask,
            other=0.0,
        ).to(tl.float32)
        y = tl.minimum(tl.maximum(tl.div_rn(x, safe), -qmax), qmax)
        if FP8:
            q = _e4m3_bits(y)
        else:
            q = ((y + _ROUND) - _ROUND).to(tl.int8)  # clamping first commutes with rounding
        tl.store(
            q_ptr + t.to(tl.int64)[:, None] * stride_qt + h * stride_qh + d[None, :], q, mask=mask
        )


@triton.jit
def _dequantize_kernel(
    q_ptr,
    scale_ptr,
    out_ptr,
    num_tokens,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    GROUP: tl.constexpr,
    DIM: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FP8: tl.constexpr,
):
    g = tl.program_id(0)
    h = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    scale = tl.load(scale_ptr + g * tl.num_programs(1) + h)
    for t0 in range(0, GROUP, BLOCK_T):
        i = t0 + tl.arange(0, BLOCK_T)
        t = (g * GROUP + i).to(tl.int64)
        mask = ((i < GROUP) & (t < num_tokens))[:, None] & (d < DIM)[None, :]
        q = tl.load(q_ptr + t[:, None] * stride_qt + h * stride_qh + d[None, :], mask=mask, other=0)
        v = _e4m3_value(q) if FP8 else q.to(tl.float32)
        tl.store(
            out_ptr + t[:, None] * stride_ot + h * stride_oh + d[None, :],
            (v * scale).to(out_ptr.dtype.element_ty),
            mask=mask,
        )


def _blocks(group_tokens: int, dim: int) -> tuple[int, int]:
    block_d = pow2(dim)
    return block_d, max(1, min(pow2(group_tokens), 4096 // block_d))


def _check_rows(*tensors: torch.Tensor) -> None:
    check_same_device(*tensors)
    if any(t.stride(-1) != 1 for t in tensors):
        raise ValueError("KV tensors need a contiguous last (head_dim) dimension")


def quantize_kv_triton(
    x: torch.Tensor,
    encoding: str,
    group_tokens: int,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """Triton `quantize_kv` for "int8" and "fp8" (same contract, inputs already validated);
    writes into `out` = (q, scales) when given."""
    t, heads, dim = x.shape
    groups = triton.cdiv(t, group_tokens)
    if out is None:
        qdtype = torch.int8 if encoding == "int8" else torch.float8_e4m3fn
        out = (
            torch.empty(x.shape, dtype=qdtype, device=x.device),
            torch.empty(groups, heads, dtype=torch.float32, device=x.device),
        )
    q, scales = out
    _check_rows(x, q)
    if q.shape != x.shape or scales.shape != (groups, heads) or not scales.is_contiguous():
        raise ValueError("out must be (q like x, contiguous float32 scales [groups, heads])")
    if t and heads:
        block_d, block_t = _blocks(group_tokens, dim)
        qv = q.view(torch.uint8) if encoding == "fp8" else q
        _quantize_kernel[(groups, heads)](
            x,
            qv,
            scales,
            t,
            x.stride(0),
            x.stride(1),
            q.stride(0),
            q.stride(1),
            _QMAX[encoding],
            GROUP=group_tokens,
            DIM=dim,
            BLOCK_T=block_t,
            BLOCK_D=block_d,
            FP8=encoding == "fp8",
            num_warps=4,
            enable_fp_fusion=False,
        )
    return q, scales


def dequantize_kv_triton(
    q: torch.Tensor,
    scales: torch.Tensor,
    encoding: str,
    group_tokens: int,
    dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton `dequantize_kv` for "int8" and "fp8" (same contract, inputs validated)."""
    t, heads, dim = q.shape
    out = torch.empty(q.shape, dtype=dtype, device=q.device) if out is None else out
    _check_rows(q, scales, out)
    if out.shape != q.shape or out.dtype != dtype or not scales.is_contiguous():
        raise ValueError(f"out must be {dtype} {tuple(q.shape)}; scales contiguous")
    if t and heads:
        block_d, block_t = _blocks(group_tokens, dim)
        qv = q.view(torch.uint8) if encoding == "fp8" else q
        _dequantize_kernel[(triton.cdiv(t, group_tokens), heads)](
            qv,
            scales,
            out,
            t,
            q.stride(0),
            q.stride(1),
            out.stride(0),
            out.stride(1),
            GROUP=group_tokens,
            DIM=dim,
            BLOCK_T=block_t,
            BLOCK_D=block_d,
            FP8=encoding == "fp8",
            num_warps=4,
            enable_fp_fusion=False,
        )
    return out
