"""Wire compression of KV for the handoff: int8 or fp8 with per-block-per-head scales.

One tensor (k or v) of one layer, [T, kv_heads, head_dim], is cut into groups of
`group_tokens` consecutive tokens (the sender's block size; the last group may be short). Each
(group, head) gets one float32 scale = absmax / qmax, so a single outlier only costs precision
within its own block and head. Encoding "raw" sends the values unchanged.
"""

from __future__ import annotations

import torch

from kernels.backend import cpu_kernels, use_cpu_kernel, use_triton

ENCODINGS = ("raw", "int8", "fp8")
_QDTYPE = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
_QMAX = {"int8": 127.0, "fp8": 448.0}  # 448 is the largest finite float8_e4m3fn


def _num_groups(num_tokens: int, group_tokens: int) -> int:
    return -(-num_tokens // group_tokens)


def _check_common(encoding: str, group_tokens: int) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if isinstance(group_tokens, bool) or not isinstance(group_tokens, int) or group_tokens < 1:
        raise ValueError(f"group_tokens must be a positive int, got {group_tokens!r}")


def _per_token(scales: torch.Tensor, num_tokens: int, group_tokens: int) -> torch.Tensor:
    """[num_groups, heads] scales broadcast to [T, heads, 1]."""
    return scales.repeat_interleave(group_tokens, dim=0)[:num_tokens].unsqueeze(-1)


def quantize_kv_ref(
    x: torch.Tensor, encoding: str, group_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of `quantize_kv`."""
    t, heads = x.shape[0], x.shape[1]
    if encoding == "raw":
        return x, torch.empty(0, heads, dtype=torch.float32, device=x.device)
    x32 = x.float()
    absmax = x32.abs().amax(dim=-1)  # [T, heads]
    pad = _num_groups(t, group_tokens) * group_tokens - t
    # Zero padding never raises a group's absmax, so the short last group needs no special case.
    absmax = torch.nn.functional.pad(absmax, (0, 0, 0, pad))
    # Divide by a tensor on x's device, not a Python number: CUDA turns division by a host
    # scalar into a multiply by its reciprocal (off by an ulp), CPU divides; this is IEEE on both.
    qmax_t = torch.tensor(_QMAX[encoding], device=x.device)
    scales = absmax.view(-1, group_tokens, heads).amax(dim=1) / qmax_t
    # An all-zero group keeps scale 0 (it dequantizes to exact zeros); divide by 1 there
    # instead of 0 so no NaN appears.
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    y = x32 / _per_token(safe, t, group_tokens)
    qmax = _QMAX[encoding]
    if encoding == "int8":
        q = y.round_().clamp_(-qmax, qmax).to(torch.int8)
    else:
        # Clamp first: rounding can push absmax / scale a hair past 448, and a cast of an
        # out-of-range value to e4m3fn is not guaranteed to saturate on every backend.
        q = y.clamp_(-qmax, qmax).to(torch.float8_e4m3fn)
    return q, scales


def quantize_kv(
    x: torch.Tensor,
    encoding: str,
    group_tokens: int,
    backend: str | None = None,
    q_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize one tensor of KV for the wire.

    x: [T, kv_heads, head_dim], float32, bfloat16 or float16, finite. encoding: "int8"
    (symmetric, round to nearest, clamp to [-127, 127]), "fp8" (float8_e4m3fn, |q| <= 448) or
    "raw". group_tokens: tokens per scale group, >= 1 (the last group may be short).
    Returns (q, scales): q [T, kv_heads, head_dim] int8 / float8_e4m3fn; scales
    [ceil(T / group_tokens), kv_heads] float32 = group absmax / qmax (0 for an all-zero group).
    For "raw", q is x itself and scales is empty ([0, kv_heads]). Quantize k and v separately.
    Error bound per element, after `dequantize_kv` to float32: int8 |err| <= scale / 2;
    fp8 |err| <= 2^-4 |x| + 2^-10 scale (3 mantissa bits; subnormal step 2^-9), up to float32
    rounding. Raises ValueError on bad shapes, dtypes, encodings or group sizes. `backend`:
    see `kernels.backend`; every backend (Triton, the C++ CPU kernel) gives bit-identical q
    and scales. `q_out`: a contiguous tensor of q's shape and dtype (on x's device) to write q
    into, e.g. a wire message's bytes; it is then the q returned (not for "raw").
    """
    _check_common(encoding, group_tokens)
    if x.dim() != 3:
        raise ValueError(f"x must be [num_tokens, kv_heads, head_dim], got {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"x must be float32, bfloat16 or float16, got {x.dtype}")
    if q_out is not None and (
        encoding == "raw"
        or q_out.shape != x.shape
        or q_out.dtype != _QDTYPE[encoding]
        or not q_out.is_contiguous()
        or q_out.device != x.device
    ):
        raise ValueError(
            f"q_out must be a contiguous {tuple(x.shape)} "
            f"{_QDTYPE.get(encoding)} tensor on {x.device} (int8/fp8 only)"
        )
    if encoding != "raw" and use_triton(x, backend):
        from kernels.triton.kv_quant import quantize_kv_triton

        q, scales = quantize_kv_triton(x, encoding, group_tokens)
    elif encoding != "raw" and use_cpu_kernel(x, backend):
        x = x.contiguous()
        q = torch.empty(x.shape, dtype=_QDTYPE[encoding]) if q_out is None else q_out
        scales = torch.empty(_num_groups(x.shape[0], group_tokens), x.shape[1], dtype=torch.float32)
        cpu_kernels().quantize_kv(x, encoding == "fp8", group_tokens, q, scales)
        return q, scales
    else:
        q, scales = quantize_kv_ref(x, encoding, group_tokens)
    return (q, scales) if q_out is None else (q_out.copy_(q), scales)


def dequantize_kv_ref(
    q: torch.Tensor, scales: torch.Tensor, encoding: str, group_tokens: int, dtype: torch.dtype
) -> torch.Tensor:
    """Torch reference of `dequantize_kv`."""
    if encoding == "raw":
        return q.to(dtype)
    return (q.float() * _per_token(scales, q.shape[0], group_tokens)).to(dtype)


def dequantize_kv(
    q: torch.Tensor,
    scales: torch.Tensor,
    encoding: str,
    group_tokens: int,
    dtype: torch.dtype,
    backend: str | None = None,
) -> torch.Tensor:
    """Invert `quantize_kv`: [T, kv_heads, head_dim] in `dtype` (a floating dtype).

    q and scales as `quantize_kv` returned them for the same encoding and group_tokens: q
    int8 ("int8"), float8_e4m3fn ("fp8") or floating ("raw"); scales float32
    [ceil(T / group_tokens), kv_heads], or empty for "raw". Returns q * scale per (group, head),
    computed in float32 then cast. Raises ValueError on any mismatch. `backend`: see
    `kernels.backend` (under "auto" the C++ CPU kernel takes bf16/fp16 outputs); every backend
    gives bit-identical results.
    """
    _check_common(encoding, group_tokens)
    if q.dim() != 3:
        raise ValueError(f"q must be [num_tokens, kv_heads, head_dim], got {tuple(q.shape)}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    if encoding == "raw":
        if not q.is_floating_point() or scales.numel() != 0:
            raise ValueError(
                f"raw encoding takes floating q and empty scales, got {q.dtype} "
                f"and {scales.numel()} scales"
            )
        return dequantize_kv_ref(q, scales, encoding, group_tokens, dtype)
    if q.dtype != _QDTYPE[encoding]:
        raise ValueError(f"{encoding} encoding needs q of dtype {_QDTYPE[encoding]}, got {q.dtype}")
    expect = (_num_groups(q.shape[0], group_tokens), q.shape[1])
    if tuple(scales.shape) != expect or scales.dtype != torch.float32:
        raise ValueError(
            f"scales must be float32 {expect} for {q.shape[0]} tokens in groups of "
            f"{group_tokens}, got {scales.dtype} {tuple(scales.shape)}"
        )
    if use_triton(q, backend):
        from kernels.triton.kv_quant import dequantize_kv_triton

        return dequantize_kv_triton(q, scales, encoding, group_tokens, dtype)
    if use_cpu_kernel(q, backend, dtype=dtype) and dtype in (
        torch.float32,
        torch.bfloat16,
        torch.float16,
    ):
        out = torch.empty(q.shape, dtype=dtype)
        cpu_kernels().dequantize_kv(
            q.contiguous(), scales.contiguous(), encoding == "fp8", group_tokens, out
        )
        return out
    return dequantize_kv_ref(q, scales, encoding, group_tokens, dtype)


def encoded_nbytes(
    num_tokens: int,
    kv_heads: int,
    head_dim: int,
    encoding: str,
    group_tokens: int,
    dtype: torch.dtype,
) -> int:
    """Bytes on the wire for one [num_tokens, kv_heads, head_dim] tensor: payload plus scales.

    `dtype` is the raw dtype (what "raw" sends); int8 and fp8 send 1 byte per value plus one
    float32 per (group, head).
    """
    _check_common(encoding, group_tokens)
    values = num_tokens * kv_heads * head_dim
    if encoding == "raw":
        return values * dtype.itemsize
    return values + _num_groups(num_tokens, group_tokens) * kv_heads * 4
