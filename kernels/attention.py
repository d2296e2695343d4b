"""Attention over the paged KV cache.

Cache layout (per layer): `k_cache`, `v_cache` of shape [num_blocks, block_size, num_kv_heads,
head_dim]. Query heads are grouped over KV heads (GQA): query head h reads KV head
h // (num_heads // num_kv_heads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from kernels.attention_inputs import check_decode_inputs
from kernels.backend import cpu_bf16_dot_available, cpu_kernels, use_cpu_kernel, use_triton


def gather_blocks(cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """cache[block_ids] for a 1-D index: [len(block_ids), *cache.shape[1:]], contiguous."""
    rows = cache.view(cache.shape[0], -1)
    if rows.shape[1] * rows.element_size() % 8 == 0:
        # Moving the rows as int64 words is several times faster than as 16-bit elements.
        picked = rows.view(torch.int64).index_select(0, block_ids).view(cache.dtype)
    else:
        picked = rows.index_select(0, block_ids)
    return picked.view(block_ids.shape[0], *cache.shape[1:])


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The first `num_tokens` tokens of a sequence's KV, contiguous: [num_tokens, kv_heads, dim]."""
    return gather_blocks(cache, block_table).view(-1, *cache.shape[2:])[:num_tokens]


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, backend: str | None = None
) -> torch.Tensor:
    """Causal attention of T queries that are the last T positions of S >= T keys.

    q: [T, heads, dim]; k, v: [S, kv_heads, dim]; returns [T, heads, dim].

    This is the prefill attention on every device; there is deliberately no Triton prefill
    kernel. Prefill is compute-bound, and SDPA already runs FlashAttention-2 on CUDA (fp16/bf16,
    native GQA, causal or bottom-right causal without a materialized mask) and its flash kernel
    on CPU. The paged cache enters only for a chunk that continues a prompt (S > T): the caller
    gathers the span's blocks into contiguous K/V first (`gather_kv`), one pass over S tokens of
    K/V, while the attention itself does ~4*T*S*heads*dim FLOPs; for chunks of >= 64 queries
    that copy is a few percent of the step, the whole gain a paged Triton kernel could make.

    On CPU, bfloat16 with head_dim 64 or 128 takes the C++ kernel (kernels/cpu/
    prefill_attention.cpp, AVX512-BF16 dot products) where it runs: torch's CPU flash kernel
    reaches a tenth of the cores' bf16 matmul rate on prompt-sized tiles. `backend`: see
    `kernels.backend`.
    """
    t, s = q.shape[0], k.shape[0]
    if (
        q.dtype is torch.bfloat16
        and q.shape[-1] in (64, 128)
        and use_cpu_kernel(q, backend)
        and cpu_bf16_dot_available()
    ):
        out = torch.empty_like(q)
        cpu_kernels().prefill_attention(q, k, v, scale, out)
        return out
    # 4-D inputs: SDPA's CPU flash kernel only takes batched inputs; 3-D falls back to the
    # math path, several times slower.
    qh, kh, vh = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    if t == s or t == 1:
        # A single query at the last position sees every key: causal needs no mask then.
        out = F.scaled_dot_product_attention(
            qh, kh, vh, is_causal=t > 1, scale=scale, enable_gqa=True
        )
    elif q.is_cuda:
        # Bottom-right causal as a bias object: SDPA keeps its flash kernel, with no mask.
        out = F.scaled_dot_product_attention(
            qh, kh, vh, attn_mask=causal_lower_right(t, s), scale=scale, enable_gqa=True
        )
    else:
        # Query i sits at absolute position s - t + i and may see keys 0..s - t + i.
        rows = torch.arange(t, device=q.device).unsqueeze(1) + (s - t)
        mask = torch.arange(s, device=q.device).unsqueeze(0) <= rows
        out = F.scaled_dot_product_attention(
            qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=True
        )
    return out.squeeze(0).transpose(0, 1)


def paged_decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Torch reference of `paged_decode_attention`."""
    b = q.shape[0]
    flat = block_tables.reshape(-1)
    k = gather_blocks(k_cache, flat).view(b, -1, *k_cache.shape[2:]).transpose(1, 2)
    v = gather_blocks(v_cache, flat).view(b, -1, *v_cache.shape[2:]).transpose(1, 2)
    if b == 1:
        n = int(context_lens[0])
        k, v, mask = k[:, :, :n], v[:, :, :n], None  # one sequence: cut the padding instead
    elif bool((context_lens == k.shape[2]).all()):
        mask = None  # equal lengths filling whole blocks: no padding to hide
    else:
        # An additive mask takes SDPA's faster CPU path than a boolean one.
        positions = torch.arange(k.shape[2], device=q.device).unsqueeze(0)
        hide = positions >= context_lens.unsqueeze(1)
        mask = torch.zeros(hide.shape, dtype=q.dtype, device=q.device)
        mask.masked_fill_(hide, float("-inf"))
        mask = mask[:, None, None, :]
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2), k, v, attn_mask=mask, scale=scale, enable_gqa=True
    )
    return out.squeeze(2)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    backend: str | None = None,
) -> torch.Tensor:
    """One query token per sequence attending to its whole cached context.

    q: [batch, heads, dim]; block_tables: [batch, max_blocks] (int64, or int32 on the Triton
    path; rows padded with any valid block id); context_lens: [batch] tokens of context,
    each >= 1, including the query's own KV, which must already be in the cache. float16,
    bfloat16 or float32, accumulated in float32. Returns [batch, heads, dim] in q's dtype.
    `backend`: see `kernels.backend` (CUDA tensors take Triton, bfloat16/float16 CPU tensors
    the C++ kernel, the rest the reference).
    """
    if use_triton(q, backend):  # checks its inputs itself
        from kernels.triton.attention import paged_decode_attention_triton

        return paged_decode_attention_triton(q, k_cache, v_cache, block_tables, context_lens, scale)
    check_decode_inputs(q, k_cache, v_cache, block_tables, context_lens, None)
    if use_cpu_kernel(q, backend):
        out = torch.empty_like(q)
        cpu_kernels().paged_decode_attention(
            q, k_cache, v_cache, block_tables.long(), context_lens.long(), scale, out
        )
        return out
    return paged_decode_attention_ref(q, k_cache, v_cache, block_tables, context_lens, scale)
