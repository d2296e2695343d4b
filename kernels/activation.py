"""SwiGLU's activation over the stacked gate/up projection: silu(gate) * up."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.backend import cpu_kernels, use_cpu_kernel


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """Torch reference of `silu_mul`."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_mul(gate_up: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """gate_up [..., 2 * I] (gate first, as runtime.engine.weights stacks them) -> [..., I].

    The C++ CPU kernel (bf16/fp16 CPU tensors under "auto") rounds silu(gate) to the dtype
    before the product, as the reference's two ops do; its exp may differ from torch's in the
    last float32 bit, so results agree to one rounding of the dtype.
    """
    if gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up's last dimension must be even, got {tuple(gate_up.shape)}")
    if use_cpu_kernel(gate_up, backend) and gate_up.stride(-1) == 1:
        rows = gate_up.reshape(-1, gate_up.shape[-1])
        return cpu_kernels().silu_mul(rows).view(*gate_up.shape[:-1], gate_up.shape[-1] // 2)
    return silu_mul_ref(gate_up)
