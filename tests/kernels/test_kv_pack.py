"""pack_kv / unpack_kv against a token-by-token reference, bit for bit."""

from __future__ import annotations

import zlib

import pytest
import torch
from cpu_kernel_helpers import needs_compiler

from kernels.kv_pack import pack_kv, unpack_kv

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
SEQ = 48  # tokens the sender holds
RANGES = [(0, 48), (0, 32), (16, 48), (8, 24), (5, 37), (3, 4), (0, 1), (47, 48), (7, 7)]


@pytest.fixture(autouse=True)
def _seed(request):
    # Fresh inputs per test case, reproducible per test id.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def make_cache(num_blocks, bs, heads, dim, dtype, layout, poison=False):
    shape = (2, num_blocks, bs, heads, dim) if layout == "NHD" else (2, num_blocks, heads, bs, dim)
    if poison:
        return torch.full(shape, float("nan"), dtype=dtype)
    return torch.randn(shape).to(dtype)


def random_table(num_blocks, used):
    """`used` distinct block ids, shuffled, out of `num_blocks` (so some blocks are unused)."""
    return torch.randperm(num_blocks)[:used]


def slot(cache, table, p, layout):
    """Token p of a sequence: a [2, heads, dim] view into the cache."""
    bs = cache.shape[2] if layout == "NHD" else cache.shape[3]
    b, o = int(table[p // bs]), p % bs
    return cache[:, b, o] if layout == "NHD" else cache[:, b, :, o]


def ref_pack(cache, table, start, end, layout):
    heads, dim = (cache.shape[3], cache.shape[4]) if layout == "NHD" else cache.shape[2::2]
    if end == start:
        return cache.new_empty(2, 0, heads, dim)
    return torch.stack([slot(cache, table, p, layout) for p in range(start, end)], dim=1)


def ref_unpack(cache, table, data, start, layout):
    out = cache.clone()
    for i in range(data.shape[1]):
        slot(out, table, start + i, layout).copy_(data[:, i])
    return out


def same_bytes(a, b):
    return a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    )


# "torch": the reference; "cpu": the C++ kernel (NHD; HND falls back to the reference).
BACKENDS = ["torch", pytest.param("cpu", marks=needs_compiler)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bs_send,bs_recv", [(16, 16), (16, 8), (4, 16), (16, 32), (8, 4)])
@pytest.mark.parametrize(
    "layouts", [("NHD", "NHD"), ("NHD", "HND"), ("HND", "NHD"), ("HND", "HND")], ids="->".join
)
def test_round_trip(dtype, bs_send, bs_recv, layouts, backend):
    lay_s, lay_r = layouts
    heads, dim = 2, 8
    send = make_cache(20, bs_send, heads, dim, dtype, lay_s)
    send_table = random_table(20, -(-SEQ // bs_send))
    recv_blocks = -(-SEQ // bs_recv)
    recv_table = random_table(recv_blocks + 3, recv_blocks)
    for start, end in RANGES:
        packed = pack_kv(send, send_table, start, end, lay_s, backend=backend)
        assert packed.is_contiguous() and packed.dtype == dtype
        assert same_bytes(packed, ref_pack(send, send_table, start, end, lay_s)), (start, end)
        into = torch.full_like(packed, float("nan"))
        assert pack_kv(send, send_table, start, end, lay_s, backend=backend, out=into) is into
        assert same_bytes(into, packed), (start, end)

        recv = make_cache(recv_blocks + 3, bs_recv, heads, dim, dtype, lay_r, poison=True)
        expect = ref_unpack(recv, recv_table, packed, start, lay_r)
        unpack_kv(recv, recv_table, packed, start, lay_r, backend=backend)
        # Whole-cache comparison: the range lands bit-exact, and every other slot (other tokens
        # of the sequence, blocks outside its table) still holds the NaN poison.
        assert same_bytes(recv, expect), (start, end)
        if end > start:
            back = pack_kv(recv, recv_table, start, end, lay_r)
            assert same_bytes(back, packed), (start, end)


@pytest.mark.parametrize(
    "dtype,bs_send,bs_recv",
    [(torch.float16, 3, 5), (torch.float32, 2, 3), (torch.bfloat16, 5, 2), (torch.float16, 4, 8)],
    ids=str,
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_odd_rows_fall_back_from_words(dtype, bs_send, bs_recv, backend):
    # heads * dim = 3: block rows, or slices after a partial first block, that are not whole
    # int64 words.
    send = make_cache(30, bs_send, 1, 3, dtype, "NHD")
    send_table = random_table(30, -(-SEQ // bs_send))
    recv_table = random_table(40, -(-SEQ // bs_recv))
    for start, end in RANGES:
        packed = pack_kv(send, send_table, start, end, backend=backend)
        assert same_bytes(packed, ref_pack(send, send_table, start, end, "NHD"))
        recv = make_cache(40, bs_recv, 1, 3, dtype, "NHD", poison=True)
        expect = ref_unpack(recv, recv_table, packed, start, "NHD")
        unpack_kv(recv, recv_table, packed, start, backend=backend)
        assert same_bytes(recv, expect), (start, end)


def test_engine_cache_layer_and_int32_table():
    # One layer of the engine's [layers, 2, blocks, bs, heads, dim] cache, as the runtime passes it.
    kv_cache = torch.randn(3, 2, 10, 4, 2, 8).to(torch.bfloat16)
    table = torch.tensor([7, 2, 9, 0], dtype=torch.int32)
    packed = pack_kv(kv_cache[1], table, 2, 15)
    assert same_bytes(packed, ref_pack(kv_cache[1], table, 2, 15, "NHD"))
    before = kv_cache.clone()
    unpack_kv(kv_cache[2], table, packed, 2)
    assert same_bytes(kv_cache[:2], before[:2])
    assert same_bytes(kv_cache[2], ref_unpack(before[2], table, packed, 2, "NHD"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bs_send,bs_recv", [(16, 16), (4, 16), (8, 3)])
def test_layer_ranges_move_in_one_call(dtype, bs_send, bs_recv, backend):
    # A slice kv_cache[l0:l1] of the engine's [layers, 2, blocks, bs, heads, dim] cache: the
    # same bytes as packing / unpacking each of its layers alone, and no other layer touched.
    send = torch.randn(5, 2, 20, bs_send, 2, 8).to(dtype)
    send_table = random_table(20, -(-SEQ // bs_send))
    recv_blocks = -(-SEQ // bs_recv)
    recv_table = random_table(recv_blocks + 3, recv_blocks)
    for (start, end), (l0, l1) in zip(RANGES, [(0, 5), (1, 4), (2, 3), (0, 2), (3, 5)] * 2):
        packed = pack_kv(send[l0:l1], send_table, start, end, backend=backend)
        assert packed.shape == (l1 - l0, 2, end - start, 2, 8)
        for i in range(l1 - l0):
            assert same_bytes(packed[i], ref_pack(send[l0 + i], send_table, start, end, "NHD"))
        into = torch.full_like(packed, float("nan"))
        assert pack_kv(send[l0:l1], send_table, start, end, backend=backend, out=into) is into
        assert same_bytes(into, packed), (start, end)

        recv = torch.full((5, 2, recv_blocks + 3, bs_recv, 2, 8), float("nan"), dtype=dtype)
        expect = recv.clone()
        for i in range(l1 - l0):
            expect[l0 + i] = ref_unpack(recv[l0 + i], recv_table, packed[i], start, "NHD")
        unpack_kv(recv[l0:l1], recv_table, packed, start, backend=backend)
        assert same_bytes(recv, expect), (start, end, l0, l1)


def test_unpack_casts_to_cache_dtype_and_accepts_strided_data():
    cache = make_cache(6, 4, 2, 8, torch.bfloat16, "HND", poison=True)
    table = torch.tensor([4, 1, 5])
    data = torch.randn(9, 2, 2, 8).transpose(0, 1)  # float32, not contiguous
    expect = ref_unpack(cache, table, data.to(torch.bfloat16), 2, "HND")
    unpack_kv(cache, table, data, 2, layout="HND")
    assert same_bytes(cache, expect)


def test_empty_ranges():
    cache = make_cache(4, 4, 2, 8, torch.float16, "NHD")
    table = torch.tensor([3, 1])
    assert pack_kv(cache, table, 8, 8).shape == (2, 0, 2, 8)
    before = cache.clone()
    unpack_kv(cache, table, torch.empty(2, 0, 2, 8), 8)
    assert same_bytes(cache, before)


def test_bad_inputs_raise():
    cache = make_cache(4, 4, 2, 8, torch.float16, "NHD")
    table = torch.tensor([3, 1])
    data = torch.zeros(2, 3, 2, 8)
    with pytest.raises(ValueError, match="layout must be one of"):
        pack_kv(cache, table, 0, 4, layout="NDH")
    with pytest.raises(ValueError, match="5 dims"):
        pack_kv(cache[0], table, 0, 4)
    with pytest.raises(ValueError, match=r"must be one layer \[2, num_blocks"):
        pack_kv(torch.zeros(3, 4, 4, 2, 8), table, 0, 4)
    with pytest.raises(ValueError, match=r"data must be \[3, 2, num_tokens, 2, 8\]"):
        unpack_kv(torch.stack([cache] * 3), table, torch.zeros(2, 2, 3, 2, 8), 0)
    with pytest.raises(ValueError, match=r"out must be a contiguous \[3, 2, 4, 2, 8\]"):
        pack_kv(
            torch.stack([cache] * 3),
            table,
            0,
            4,
            out=torch.empty(2, 2, 4, 2, 8, dtype=torch.float16),
        )
    with pytest.raises(ValueError, match="contiguous"):
        pack_kv(cache.transpose(3, 4), table, 0, 4)
    with pytest.raises(ValueError, match="1-D int64"):
        pack_kv(cache, table.float(), 0, 4)
    with pytest.raises(ValueError, match="1-D int64"):
        pack_kv(cache, table.view(1, 2), 0, 4)
    with pytest.raises(ValueError, match="capacity 8"):
        pack_kv(cache, table, 0, 9)
    with pytest.raises(ValueError, match="token range"):
        pack_kv(cache, table, 5, 4)
    with pytest.raises(ValueError, match="token range"):
        pack_kv(cache, table, -1, 4)
    with pytest.raises(ValueError, match="outside the cache's 4 blocks"):
        pack_kv(cache, torch.tensor([3, 4]), 0, 8)
    with pytest.raises(ValueError, match=r"data must be \[2, num_tokens, 2, 8\]"):
        unpack_kv(cache, table, torch.zeros(2, 3, 4, 4), 0)
    with pytest.raises(ValueError, match=r"data must be \[2, num_tokens"):
        unpack_kv(cache, table, data[0], 0)
    with pytest.raises(ValueError, match="floating point"):
        unpack_kv(cache, table, data.to(torch.int16), 0)
    with pytest.raises(ValueError, match="capacity 8"):
        unpack_kv(cache, table, data, 6)
    with pytest.raises(ValueError, match=r"out must be a contiguous \[2, 4, 2, 8\]"):
        pack_kv(cache, table, 0, 4, out=torch.empty(2, 4, 2, 8))  # float32, not float16


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_block_ids_raise_before_anything_is_written(backend):
    cache = make_cache(4, 4, 2, 8, torch.bfloat16, "NHD")
    before = cache.clone()
    data = torch.randn(2, 8, 2, 8).to(torch.bfloat16)
    for table in (torch.tensor([1, 4]), torch.tensor([2, -1])):
        with pytest.raises(ValueError, match="outside the cache's 4 blocks"):
            unpack_kv(cache, table, data, 0, backend=backend)
        with pytest.raises(ValueError, match="outside the cache's 4 blocks"):
            pack_kv(cache, table, 0, 8, backend=backend)
    assert same_bytes(cache, before)
    layers = torch.stack([cache] * 3)
    with pytest.raises(ValueError, match="outside the cache's 4 blocks"):
        unpack_kv(layers, torch.tensor([1, 4]), torch.stack([data] * 3), 0, backend=backend)
    assert same_bytes(layers, torch.stack([before] * 3))
