"""The C++ CPU int8/fp8 KV wire quantization: bit-identical to the torch reference."""

import pytest
import torch
from cpu_kernel_helpers import TOLERANCE, needs_compiler


@needs_compiler
@pytest.mark.parametrize("encoding", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize(
    "shape,group", [((37, 3, 64), 16), ((5, 2, 40), 4), ((16, 8, 128), 16)], ids=str
)
def test_kv_quantization_is_bit_identical_to_the_reference(encoding, dtype, shape, group):
    from kernels.kv_quant import dequantize_kv, dequantize_kv_ref, quantize_kv, quantize_kv_ref

    gen = torch.Generator().manual_seed(shape[0] * 31 + group)
    x = (
        torch.randn(*shape, generator=gen) * torch.rand(shape[0], shape[1], 1, generator=gen) * 8
    ).to(dtype)
    x[:group, 0] = 0  # an all-zero (group, head): scale 0, exact zeros back
    q, scales = quantize_kv(x, encoding, group, backend="cpu")
    want_q, want_scales = quantize_kv_ref(x, encoding, group)
    assert q.dtype == want_q.dtype
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8))
    assert torch.equal(scales, want_scales) and scales[0, 0] == 0
    for out_dtype in (torch.bfloat16, torch.float32):
        got = dequantize_kv(q, scales, encoding, group, out_dtype, backend="cpu")
        want = dequantize_kv_ref(q, scales, encoding, group, out_dtype)
        assert torch.equal(got, want)


@needs_compiler
def test_fp8_rounding_covers_every_e4m3_value_and_the_midpoints():
    from kernels.kv_quant import quantize_kv, quantize_kv_ref

    # All finite e4m3 values, the midpoints between neighbours (ties go to even) and values
    # just off them, scaled so that the group's absmax is exactly 448 (scale 1).
    values = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    values = values[values.isfinite()].unique()
    mids = (values[1:] + values[:-1]) / 2
    probe = torch.cat(
        [values, mids, mids.nextafter(torch.tensor(0.0)), mids.nextafter(torch.tensor(1e9))]
    )
    probe = torch.cat([probe, torch.full((-probe.numel() % 16,), 448.0)])
    x = probe.view(-1, 1, 16)
    q, scales = quantize_kv(x, "fp8", x.shape[0], backend="cpu")
    want, want_scales = quantize_kv_ref(x, "fp8", x.shape[0])
    assert scales.item() == want_scales.item() == 1.0
    assert torch.equal(q.view(torch.uint8), want.view(torch.uint8))
