"""A whole decoder stack for a small decode-only batch in one C++ call (kernels/cpu/decoder.cpp).

The reference is the per-op layer loop of `runtime.engine.fused_forward` over the same
kernels; `decode_layers` computes the same layers in the same order without returning to
Python between ops, which at batch 1 saves more time than any single kernel does. Only bf16
CPU tensors of at most `MAX_ROWS` sequences, one new token each, whose weights keep the plain
copies the small-batch GEMV reads, take it: `can_decode_layers` says whether a call would.
"""

from __future__ import annotations

import torch

from kernels.backend import cpu_bf16_dot_available, cpu_kernels, use_cpu_kernel
from kernels.linear import MAX_ROWS


def can_decode_layers(hidden: torch.Tensor, backend: str | None = None) -> bool:
    """Whether `decode_layers` runs here for this batch's hidden states [T, hidden] (the
    caller also needs the plain weights: `ModelWeights.decode_stack`, built only where the
    matmul sizes fit the GEMV)."""
    return (
        hidden.dtype is torch.bfloat16
        and 1 <= hidden.shape[0] <= MAX_ROWS
        and use_cpu_kernel(hidden, backend)
        and cpu_bf16_dot_available()
    )


def decode_layers(
    hidden,
    layers: dict[str, list[torch.Tensor]],
    kv_cache: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slot_mapping: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    eps: float,
    scale: float,
):
    """Every layer for hidden [T, hidden] (T new tokens of T sequences); returns (hidden,
    residual) after the last layer, as the layer loop leaves them (the final norm is the
    caller's). `layers` maps input_norm, qkv, qkv_bias, q_norm, k_norm, o_proj, post_norm,
    gate_up, down to per-layer tensor lists (qkv_bias, q_norm, k_norm may be empty); the
    matmul weights are plain contiguous [N, K]. Writes each layer's new KV at `slot_mapping`
    in kv_cache [layers, 2, blocks, block_size, kv_heads, head_dim] before attending."""
    return cpu_kernels().decode_layers(
        hidden,
        layers["input_norm"],
        layers["qkv"],
        layers["qkv_bias"],
        layers["q_norm"],
        layers["k_norm"],
        layers["o_proj"],
        layers["post_norm"],
        layers["gate_up"],
        layers["down"],
        kv_cache,
        cos,
        sin,
        slot_mapping.long(),
        block_tables.long(),
        context_lens.long(),
        num_heads,
        num_kv_heads,
        eps,
        scale,
    )
