"""Attention over the paged KV cache.

Cache layout (per layer): `k_cache`, `v_cache` of shape [num_blocks, block_size, num_kv_heads,
head_dim]. Query heads are grouped over KV heads (GQA): query head h reads KV head
h // (num_heads // num_kv_heads).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The first `num_tokens` tokens of a sequence's KV, contiguous: [num_tokens, kv_heads, dim]."""
    blocks = cache.index_select(0, block_table)
    return blocks.reshape(-1, *cache.shape[2:])[:num_tokens]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of T queries that are the last T positions of S >= T keys.

    q: [T, heads, dim]; k, v: [S, kv_heads, dim]; returns [T, heads, dim].
    """
    t, s = q.shape[0], k.shape[0]
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    if t == s:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale,
                                             enable_gqa=True)
    else:
        # Query i sits at absolute position s - t + i and may see keys 0..s - t + i.
        rows = torch.arange(t).unsqueeze(1) + (s - t)
        mask = torch.arange(s).unsqueeze(0) <= rows
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale,
                                             enable_gqa=True)
    return out.transpose(0, 1)


def paged_decode_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               block_tables: torch.Tensor, context_lens: torch.Tensor,
                               scale: float) -> torch.Tensor:
    """Torch reference of `paged_decode_attention`."""
    b = q.shape[0]
    k = k_cache[block_tables].reshape(b, -1, *k_cache.shape[2:]).transpose(1, 2)
    v = v_cache[block_tables].reshape(b, -1, *v_cache.shape[2:]).transpose(1, 2)
    if bool((context_lens == k.shape[2]).all()):
        mask = None  # equal lengths filling whole blocks: no padding to hide
    else:
        mask = (torch.arange(k.shape[2]).unsqueeze(0) < context_lens.unsqueeze(1))[:, None, None, :]
    out = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=mask, scale=scale,
                                         enable_gqa=True)
    return out.squeeze(2)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor,
                           scale: float) -> torch.Tensor:
    """One query token per sequence attending to its whole cached context.

    q: [batch, heads, dim]; block_tables: [batch, max_blocks] (int64; rows padded with any
    valid block id); context_lens: [batch] tokens of context including the query's own KV,
    which must already be in the cache. Returns [batch, heads, dim] in q's dtype.
    """
    if q.dim() != 3 or block_tables.dim() != 2 or block_tables.shape[0] != q.shape[0]:
        raise ValueError(f"bad shapes: q {tuple(q.shape)}, block_tables {tuple(block_tables.shape)}")
    return paged_decode_attention_ref(q, k_cache, v_cache, block_tables, context_lens, scale)
