"""Triton int8/fp8 wire quantization against the torch reference: bit-identical."""

import pytest
import torch

from kernels.kv_quant import dequantize_kv, quantize_kv
from kernels.triton.kv_quant import dequantize_kv_triton, quantize_kv_triton

QDTYPE = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


def bits(t):
    return t.contiguous().view(torch.uint8)


def make_x(tokens, heads, dim, dtype, device):
    # Magnitudes over ~6 orders within a group; exact zeros and negative zeros too.
    x = torch.randn(tokens, heads, dim) * torch.exp(torch.randn(tokens, heads, 1) * 2)
    x.view(-1)[::7] = 0.0
    x.view(-1)[3::11] = -0.0
    return x.to(dtype).to(device)


@pytest.mark.parametrize("encoding", ["int8", "fp8"])
@pytest.mark.parametrize("tokens,group", [(37, 16), (16, 16), (9, 1), (5, 64), (70, 33)])
def test_quantize_and_dequantize_bit_exact(device, dtype, poison, encoding, tokens, group):
    x = make_x(tokens, 3, 24, dtype, device)
    x[: min(group, tokens), 1] = 0  # an all-zero (group, head): scale 0
    groups = -(-tokens // group)
    out = (poison(x.shape, QDTYPE[encoding]), poison((groups, 3), torch.float32))
    q, scales = quantize_kv_triton(x, encoding, group, out=out)
    q_ref, scales_ref = quantize_kv(x, encoding, group, backend="torch")
    assert torch.equal(bits(scales), bits(scales_ref)) and torch.equal(bits(q), bits(q_ref))
    for out_dtype in (torch.float32, dtype):
        deq = dequantize_kv_triton(
            q, scales, encoding, group, out_dtype, out=poison(x.shape, out_dtype)
        )
        want = dequantize_kv(q, scales, encoding, group, out_dtype, backend="torch")
        assert torch.equal(bits(deq), bits(want))


def test_fp8_rounding_sweep(device):
    # Every e4m3 value, the midpoints between neighbours (ties go to even) and a hair on either
    # side, in groups whose absmax is 448 so that the scale is exactly 1.
    grid = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    mids = (grid[1:] + grid[:-1]) / 2
    vals = torch.cat(
        [grid, mids, mids.nextafter(torch.tensor(0.0)), mids.nextafter(torch.tensor(1e9))]
    )
    vals = torch.cat([vals, -vals])
    per_row = 63
    rows = -(-vals.numel() // per_row)
    x = torch.zeros(rows * per_row)
    x[: vals.numel()] = vals
    x = torch.cat([x.view(rows, 1, per_row), torch.full((rows, 1, 1), 448.0)], dim=2)
    x = x.to(device)
    q, scales = quantize_kv(x, "fp8", 1, backend="triton")
    q_ref, _ = quantize_kv(x, "fp8", 1, backend="torch")
    assert torch.all(scales == 1)
    assert torch.equal(bits(q), bits(q_ref))
    assert torch.equal(bits(q), bits(x.to(torch.float8_e4m3fn)))


def test_dispatch_on_a_strided_chunk(device):
    # The wire quantizes [layers * 2 * tokens, heads, dim] reshapes; rows may be strided.
    kv = make_x(24, 4, 16, torch.float16, device).view(24, 2, 2, 16)[:, 1]
    for encoding in ("int8", "fp8"):
        q, s = quantize_kv(kv, encoding, 8, backend="triton")
        q_ref, s_ref = quantize_kv(kv, encoding, 8, backend="torch")
        assert torch.equal(bits(q), bits(q_ref)) and torch.equal(s, s_ref)
    q, s = quantize_kv(kv, "raw", 8, backend="triton")
    assert q is kv
