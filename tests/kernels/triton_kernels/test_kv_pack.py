"""Triton KV pack/unpack against the torch reference, byte for byte, receivers poisoned."""

import pytest
import torch

from kernels.kv_pack import pack_kv, unpack_kv
from kernels.triton.kv_pack import pack_kv_triton

SEQ = 40
RANGES = [(0, 40), (5, 37), (16, 32), (3, 4), (39, 40), (7, 7)]


def cache(device, num_blocks, bs, heads, dim, dtype, layout):
    shape = (2, num_blocks, bs, heads, dim) if layout == "NHD" else (2, num_blocks, heads, bs, dim)
    return torch.randn(shape).to(dtype).to(device)


def same_bytes(a, b):
    return a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    )


@pytest.mark.parametrize("bs_send,bs_recv", [(16, 8), (4, 16), (3, 5)], ids=str)
@pytest.mark.parametrize("layouts", [("NHD", "NHD"), ("NHD", "HND"), ("HND", "NHD")], ids="->".join)
def test_round_trip_with_block_size_conversion(device, dtype, poison, bs_send, bs_recv, layouts):
    lay_s, lay_r = layouts
    send = cache(device, 16, bs_send, 2, 8, dtype, lay_s)
    send_table = torch.randperm(16)[: -(-SEQ // bs_send)]
    n_recv = -(-SEQ // bs_recv)
    recv_table = torch.randperm(n_recv + 3)[:n_recv]
    shape = (2, n_recv + 3, bs_recv, 2, 8) if lay_r == "NHD" else (2, n_recv + 3, 2, bs_recv, 8)
    for start, end in RANGES:
        out = poison((2, end - start, 2, 8), dtype)
        got = pack_kv_triton(send, send_table, start, end, lay_s, out=out)
        assert got is out
        assert same_bytes(got, pack_kv(send, send_table, start, end, lay_s, backend="torch"))
        recv, want = poison(shape, dtype), poison(shape, dtype)
        unpack_kv(recv, recv_table, got, start, lay_r, backend="triton")
        unpack_kv(want, recv_table, got, start, lay_r, backend="torch")
        assert same_bytes(recv, want), (start, end)  # untouched slots still poisoned


def test_odd_rows_int32_table_and_cast(device, poison):
    # heads * dim = 3 (no word-sized rows), an int32 table, float32 data into a float16 cache.
    send = cache(device, 12, 3, 1, 3, torch.float16, "NHD")
    table = torch.randperm(12)[:10].int()
    packed = pack_kv(send, table, 2, 29, backend="triton")
    assert same_bytes(packed, pack_kv(send, table, 2, 29, backend="torch"))
    data = torch.randn(9, 2, 1, 3, device=device).transpose(0, 1)  # float32, strided
    recv, want = poison((2, 12, 3, 1, 3), torch.float16), poison((2, 12, 3, 1, 3), torch.float16)
    unpack_kv(recv, table, data, 4, backend="triton")
    unpack_kv(want, table, data, 4, backend="torch")
    assert same_bytes(recv, want)


def test_layer_of_engine_cache(device, dtype):
    kv_cache = torch.randn(3, 2, 10, 4, 2, 8).to(dtype).to(device)
    table = torch.tensor([7, 2, 9, 0])
    before = kv_cache.clone()
    packed = pack_kv(kv_cache[1], table, 2, 15, backend="triton")
    assert same_bytes(packed, pack_kv(kv_cache[1], table, 2, 15, backend="torch"))
    unpack_kv(kv_cache[2], table, packed.flip(1), 2, backend="triton")
    unpack_kv(before[2], table, packed.flip(1), 2, backend="torch")
    assert same_bytes(kv_cache, before)
