"""Triton in-place rotary embedding against the torch reference: bit for bit."""

import pytest
import torch

from kernels.rotary import apply_rotary_


def cos_sin(tokens, dim, dtype, device):
    """As runtime.engine.model.rope_cos_sin builds them (sign-folded sin)."""
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    emb = torch.arange(tokens).float()[:, None] * inv
    emb = torch.cat([emb, emb], dim=-1) + torch.rand(tokens, 1) * 100  # arbitrary positions
    cos, sin = emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]
    sin[..., : dim // 2] = -sin[..., : dim // 2]
    return cos.to(device), sin.to(device)


@pytest.mark.parametrize("tokens,heads,kv_heads,dim", [(7, 6, 2, 16), (3, 9, 3, 64), (1, 4, 4, 8)])
def test_rotates_q_and_k_inside_qkv(device, dtype, tokens, heads, kv_heads, dim):
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim).to(dtype).to(device)
    cos, sin = cos_sin(tokens, dim, dtype, device)
    got, want = qkv.clone(), qkv.clone()
    view = got[:, : (heads + kv_heads) * dim].view(tokens, heads + kv_heads, dim)
    assert apply_rotary_(view, cos, sin, backend="triton") is view
    apply_rotary_(
        want[:, : (heads + kv_heads) * dim].view(tokens, heads + kv_heads, dim),
        cos,
        sin,
        backend="torch",
    )
    assert torch.equal(got, want)  # v (the tail) untouched, q and k bit-exact


def test_bad_inputs_raise(device):
    qk = torch.randn(4, 2, 8, device=device)
    cos, sin = cos_sin(4, 8, torch.float32, device)
    with pytest.raises(ValueError, match="qk's dtype"):
        apply_rotary_(qk, cos.half(), sin.half(), backend="triton")
    with pytest.raises(ValueError, match="even head_dim"):
        apply_rotary_(qk[:3], cos, sin, backend="triton")
