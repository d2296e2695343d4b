"""Fused residual add + RMSNorm in Triton: one program per row, statistics in float32."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton.common import check_same_device, pow2


@triton.jit
def _add_rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    new_res_ptr,
    stride_x,
    stride_r,
    n_cols,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    mask = c < n_cols
    x = tl.load(x_ptr + row * stride_x + c, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + c, mask=mask, other=0.0)
        # Round the sum to the input dtype first, as the unfused add stores it.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(new_res_ptr + row * n_cols + c, x, mask=mask)
    s = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt_rn(tl.sum(s * s, 0) / n_cols + eps)
    w = tl.load(w_ptr + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n_cols + c, (s * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


def fused_add_rms_norm_triton(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """Triton `fused_add_rms_norm` (same contract, inputs already validated); writes into
    `out` = (normed, new_residual), contiguous, when given (new_residual unused without a
    residual)."""
    check_same_device(x, weight, *([] if residual is None else [residual]))
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    res = rows if residual is None else residual.reshape(-1, n)
    if rows.stride(-1) != 1 or res.stride(-1) != 1 or not weight.is_contiguous():
        raise ValueError("x, residual and weight need a contiguous last dimension")
    if out is None:
        fresh = [torch.empty(x.shape, dtype=x.dtype, device=x.device) for _ in range(2)]
        out = (fresh[0], x if residual is None else fresh[1])
    normed, new_res = out
    if rows.shape[0]:
        block = pow2(n)
        _add_rms_norm_kernel[(rows.shape[0],)](
            rows,
            res,
            weight,
            normed,
            new_res,
            rows.stride(0),
            res.stride(0),
            n,
            eps,
            HAS_RESIDUAL=residual is not None,
            BLOCK=block,
            num_warps=max(1, min(16, block // 256)),
            enable_fp_fusion=True,
        )
    return normed, (x if residual is None else new_res)
