"""Triton paged decode attention against the torch reference."""

import pytest
import torch

from kernels.attention import paged_decode_attention, paged_decode_attention_ref
from kernels.triton.attention import paged_decode_attention_triton

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def make_case(device, dtype, batch, heads, kv_heads, dim, block_size, lens, spare_blocks=3):
    """Random q and cache; each sequence gets shuffled distinct blocks; tables padded."""
    width = max(-(-n // block_size) for n in lens)
    num_blocks = batch * width + spare_blocks
    perm = torch.randperm(num_blocks)
    tables = perm[: batch * width].view(batch, width)
    q = torch.randn(batch, heads, dim)
    k = torch.randn(num_blocks, block_size, kv_heads, dim)
    v = torch.randn(num_blocks, block_size, kv_heads, dim)
    to = dict(device=device)
    return (
        q.to(dtype).to(**to),
        k.to(dtype).to(**to),
        v.to(dtype).to(**to),
        tables.to(**to),
        torch.tensor(lens, **to),
    )


def check(device, dtype, poison, heads, kv_heads, dim, block_size, lens, num_splits=None):
    q, k, v, tables, lens_t = make_case(
        device, dtype, len(lens), heads, kv_heads, dim, block_size, lens
    )
    out = poison(q.shape, dtype)
    got = paged_decode_attention_triton(
        q, k, v, tables, lens_t, dim**-0.5, num_splits=num_splits, out=out
    )
    assert got is out
    want = paged_decode_attention_ref(q.float(), k.float(), v.float(), tables, lens_t, dim**-0.5)
    torch.testing.assert_close(got.float(), want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (9, 3)], ids=str)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_gqa_groups_and_splits(device, dtype, poison, heads, kv_heads, num_splits):
    check(device, dtype, poison, heads, kv_heads, 16, 4, [1, 7, 21, 16], num_splits)


@pytest.mark.parametrize(
    "block_size,lens", [(1, [5, 2]), (3, [10, 1, 4]), (16, [70, 33]), (32, [3, 64])], ids=str
)
def test_block_sizes_and_lengths(device, dtype, poison, block_size, lens):
    check(device, dtype, poison, 4, 2, 16, block_size, lens)


def test_head_dim_not_a_power_of_two_and_automatic_splits(device, poison):
    # dim 24 pads to 32 lanes; 130 tokens exceed two tiles of 64; splits picked by the launcher.
    check(device, torch.float16, poison, 8, 2, 24, 8, [130, 1, 65])


def test_strided_q_and_int32_tables_through_dispatch(device):
    q, k, v, tables, lens = make_case(device, torch.float32, 3, 4, 2, 16, 4, [9, 2, 12])
    qk = torch.cat([q, torch.randn_like(q)], dim=1)[:, :4]  # a view, like q inside qkv
    got = paged_decode_attention(qk, k, v, tables.int(), lens.int(), 0.3, backend="triton")
    want = paged_decode_attention(q, k, v, tables, lens, 0.3, backend="torch")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_bad_inputs_raise(device):
    q, k, v, tables, lens = make_case(device, torch.float32, 2, 4, 2, 16, 4, [3, 4])
    with pytest.raises(ValueError, match="share one of"):
        paged_decode_attention_triton(q.half(), k, v, tables, lens, 1.0)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        paged_decode_attention_triton(q[:, :3], k, v, tables, lens, 1.0)
    with pytest.raises(ValueError, match="int32 or int64"):
        paged_decode_attention_triton(q, k, v, tables.float(), lens, 1.0)
    with pytest.raises(ValueError, match="context_lens must be"):
        paged_decode_attention_triton(q, k, v, tables, lens[:1], 1.0)
    with pytest.raises(ValueError, match="contiguous last"):
        paged_decode_attention_triton(
            q.transpose(1, 2).contiguous().transpose(1, 2), k, v, tables, lens, 1.0
        )
