"""The forward pass over the fused kernels: the GPU engine's model, and the CPU's in half precision.

Same contract and arithmetic as `runtime.engine.model.forward`, restructured around the fused
kernels: each residual add travels with the RMSNorm that follows it (`fused_add_rms_norm`),
rope rotates q and k in place inside the qkv projection (`apply_rotary_`), SwiGLU's
activation is one op (`silu_mul`), and decode attention goes through `paged_decode_attention`.
Each dispatches on the tensors' device (Triton on CUDA, the C++ CPU kernels for bf16/fp16 CPU
tensors), so on CPU with the torch references this returns `forward`'s logits bit for bit.
Matmuls go through `model.linear`, which takes oneDNN-prepacked CPU weights too. Allocates only
on the inputs' device and never syncs with the host on decode-only batches with Triton
attention, so a decode step can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.activation import silu_mul
from kernels.decoder import can_decode_layers, decode_layers
from kernels.norm import fused_add_rms_norm
from kernels.rotary import apply_rotary_
from runtime.engine.model import (
    AttentionMetadata,
    ModelGeometry,
    ModelWeights,
    attention,
    linear,
    rope_cos_sin,
)


def forward_fused(
    w: ModelWeights,
    g: ModelGeometry,
    kv_cache: torch.Tensor,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    meta: AttentionMetadata,
    logits_indices: torch.Tensor,
    layer_done=None,
) -> torch.Tensor:
    """`runtime.engine.model.forward` over the fused kernels (see the module docstring)."""
    t = input_ids.shape[0]
    h_, kvh, d, eps = g.num_heads, g.num_kv_heads, g.head_dim, g.rms_norm_eps
    scale = d**-0.5
    hidden = F.embedding(input_ids, w.embed)
    cos, sin = rope_cos_sin(w, positions, hidden.dtype)
    if (
        w.decode_stack is not None
        and layer_done is None
        and not meta.prefills
        and meta.num_decode == t
        and can_decode_layers(hidden)
    ):
        # A small decode-only batch: every layer in one C++ call, the same kernels in order.
        assert meta.decode_block_tables is not None and meta.decode_context_lens is not None
        hidden, residual = decode_layers(
            hidden,
            w.decode_stack,
            kv_cache,
            cos,
            sin,
            meta.slot_mapping,
            meta.decode_block_tables,
            meta.decode_context_lens,
            h_,
            kvh,
            eps,
            scale,
        )
    else:
        hidden, residual = _layers(w, g, kv_cache, hidden, cos, sin, meta, layer_done)
    last, _ = fused_add_rms_norm(
        hidden.index_select(0, logits_indices),
        residual.index_select(0, logits_indices),
        w.norm,
        eps,
    )
    return linear(last, w.lm_head).float()


def _layers(
    w: ModelWeights,
    g: ModelGeometry,
    kv_cache: torch.Tensor,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    meta: AttentionMetadata,
    layer_done,
):
    """The decoder layers one op at a time: (hidden, residual) after the last layer."""
    t = hidden.shape[0]
    h_, kvh, d, eps = g.num_heads, g.num_kv_heads, g.head_dim, g.rms_norm_eps
    scale = d**-0.5
    attn_out = torch.empty(t, h_, d, dtype=hidden.dtype, device=hidden.device)
    residual = None  # layer 0 normalizes the embedding itself
    for i, lw in enumerate(w.layers):
        x, residual = fused_add_rms_norm(hidden, residual, lw.input_norm, eps)
        qkv = linear(x, lw.qkv, lw.qkv_bias)
        qk, v = qkv.split([(h_ + kvh) * d, kvh * d], dim=-1)
        qk, v = qk.view(t, h_ + kvh, d), v.view(t, kvh, d)
        if lw.q_norm is not None and lw.k_norm is not None:
            qk = torch.cat(
                [
                    fused_add_rms_norm(qk[:, :h_], None, lw.q_norm, eps)[0],
                    fused_add_rms_norm(qk[:, h_:], None, lw.k_norm, eps)[0],
                ],
                dim=1,
            )
        apply_rotary_(qk, cos, sin)
        attention(qk[:, :h_], qk[:, h_:], v, kv_cache[i], meta, scale, attn_out)
        if layer_done is not None:
            layer_done(i)
        x, residual = fused_add_rms_norm(
            linear(attn_out.view(t, h_ * d), lw.o_proj), residual, lw.post_norm, eps
        )
        hidden = linear(silu_mul(linear(x, lw.gate_up)), lw.down)
    return hidden, residual
