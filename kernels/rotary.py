"""Rotary position embedding applied in place to q and k heads side by side.

`cos` and the sign-folded `sin` come from `runtime.engine.model.rope_cos_sin` ([T, 1, head_dim],
first half of sin negated), so that rope(x) = x * cos + roll(x, head_dim / 2) * sin equals
transformers' x * cos + rotate_half(x) * sin bit for bit.
"""

from __future__ import annotations

import torch

from kernels.backend import cpu_kernels, use_cpu_kernel, use_triton


def apply_rotary_ref_(qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Torch reference of `apply_rotary_`: the engine's own rope, then written back."""
    half = qk.shape[-1] // 2
    return qk.copy_(qk * cos + torch.roll(qk, half, dims=-1) * sin)


def apply_rotary_(
    qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str | None = None
) -> torch.Tensor:
    """Rotate qk [T, heads, head_dim] in place and return it.

    qk may be a strided view (e.g. the q and k heads inside the fused qkv projection) with a
    contiguous last dimension; cos, sin: [T, 1, head_dim] in qk's dtype
    (float32, bfloat16 or float16). Every product and the sum round to qk's dtype as in the
    reference, so every backend (Triton, the C++ CPU kernel) agrees bit for bit.
    `backend`: see `kernels.backend`.
    """
    t, d = qk.shape[0], qk.shape[-1]
    if qk.dim() != 3 or d % 2 or cos.shape != (t, 1, d) or sin.shape != (t, 1, d):
        raise ValueError(
            f"qk must be [T, heads, even head_dim] with cos/sin [T, 1, head_dim], "
            f"got {tuple(qk.shape)}, {tuple(cos.shape)}, {tuple(sin.shape)}"
        )
    if cos.dtype != qk.dtype or sin.dtype != qk.dtype:
        raise ValueError(
            f"cos and sin must be in qk's dtype {qk.dtype}, got {cos.dtype}, {sin.dtype}"
        )
    if use_triton(qk, backend):
        from kernels.triton.rotary import apply_rotary_triton_

        return apply_rotary_triton_(qk, cos, sin)
    if use_cpu_kernel(qk, backend) and qk.stride(-1) == 1:
        cpu_kernels().rotary_(qk, cos.contiguous(), sin.contiguous())
        return qk
    return apply_rotary_ref_(qk, cos, sin)
