"""Fused residual add + RMSNorm, the pair every decoder layer runs twice.

`fused_add_rms_norm(x, residual, weight, eps)` returns (normed, new_residual) with
new_residual = residual + x (rounded to x's dtype, as an unfused add would) and normed =
rms_norm(new_residual) * weight. On the GPU one kernel reads x, residual and weight once and
writes both results, instead of an add kernel and a norm kernel that re-reads the sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.backend import cpu_kernels, use_cpu_kernel, use_triton

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """runtime.engine.model's RMSNorm: transformers' op order in float32 (bit-exact greedy
    tokens); half precisions take torch's fused kernel, which accumulates in float32 too."""
    if x.dtype is not torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def fused_add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of `fused_add_rms_norm`."""
    new_residual = x if residual is None else residual + x
    return rms_norm_ref(new_residual, weight, eps), new_residual


def fused_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(residual + x) * weight, residual + x) over the last dimension.

    x: [..., hidden] float32, bfloat16 or float16; residual: same shape and dtype, or None
    (plain RMSNorm: new_residual is x itself); weight: [hidden], x's dtype. Statistics in
    float32. Returns new tensors; the inputs are not modified. `backend`: see
    `kernels.backend`. Triton and the C++ CPU kernel agree with the reference to float32
    rounding of the statistics (new_residual bit-exact).
    """
    if x.dtype not in DTYPES or weight.dtype != x.dtype or weight.shape != x.shape[-1:]:
        raise ValueError(
            f"x must be one of {DTYPES} with weight [{x.shape[-1]}] of its dtype, "
            f"got {x.dtype} and {weight.dtype} {tuple(weight.shape)}"
        )
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(
            f"residual must match x {tuple(x.shape)} {x.dtype}, got "
            f"{tuple(residual.shape)} {residual.dtype}"
        )
    if use_triton(x, backend):
        from kernels.triton.norm import fused_add_rms_norm_triton

        return fused_add_rms_norm_triton(x, residual, weight, eps)
    if use_cpu_kernel(x, backend):
        return _fused_add_rms_norm_cpu(x, residual, weight, eps)
    return fused_add_rms_norm_ref(x, residual, weight, eps)


def _fused_add_rms_norm_cpu(x, residual, weight, eps):
    rows = x.reshape(-1, x.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    normed = torch.empty(x.shape, dtype=x.dtype)
    if residual is None:
        cpu_kernels().fused_add_rms_norm(
            rows,
            None,
            weight.contiguous(),
            eps,
            normed.view(rows.shape),
            torch.empty(0, dtype=x.dtype),
        )
        return normed, x
    new_residual = torch.empty(x.shape, dtype=x.dtype)
    cpu_kernels().fused_add_rms_norm(
        rows,
        residual.reshape(rows.shape).contiguous(),
        weight.contiguous(),
        eps,
        normed.view(rows.shape),
        new_residual.view(rows.shape),
    )
    return normed, new_residual
