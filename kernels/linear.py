"""Matrix-vector products of decode at small batch: y = x @ w.T (+ bias).

`linear_small_batch` is the dispatch function: the C++ CPU kernel (kernels/cpu/gemv.cpp,
AVX512-BF16) for bfloat16 CPU inputs of at most `MAX_ROWS` rows where this CPU has the
instructions, else the torch reference (F.linear). `kernels.backend.cpu_bf16_dot_available()`
says whether the kernel would run here, so callers keep the plain weight copy it reads only
then.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.backend import cpu_bf16_dot_available, cpu_kernels, use_cpu_kernel

MAX_ROWS = 4


def linear_small_batch_ref(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Torch reference of `linear_small_batch`."""
    return F.linear(x, w, bias)


def _kernel_fits(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (
        x.dim() == 2
        and x.shape[0] <= MAX_ROWS
        and x.dtype == w.dtype == torch.bfloat16
        and x.stride(-1) == 1
        and w.is_contiguous()
        and w.shape[1] % 32 == 0
        and (bias is None or bias.dtype == torch.bfloat16)
    )


def linear_small_batch(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, backend: str | None = None
) -> torch.Tensor:
    """x [M, K] @ w [N, K].T + bias [N], in x's dtype, accumulated in float32.

    The kernel takes bfloat16, M <= MAX_ROWS, K a multiple of 32 and a contiguous w; anything
    else (or another backend) takes the reference. Agrees with the reference to bfloat16
    rounding of the float32 sums (the summation order differs).
    """
    if x.shape[-1] != w.shape[1] or (bias is not None and bias.shape != (w.shape[0],)):
        raise ValueError(
            f"x {tuple(x.shape)}, w {tuple(w.shape)} and bias "
            f"{None if bias is None else tuple(bias.shape)} do not fit x @ w.T + b"
        )
    if use_cpu_kernel(x, backend) and _kernel_fits(x, w, bias) and cpu_bf16_dot_available():
        return cpu_kernels().linear_small_batch(x, w, bias)
    return linear_small_batch_ref(x, w, bias)
