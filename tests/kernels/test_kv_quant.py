"""quantize_kv / dequantize_kv against a token-loop reference and derived error bounds."""

from __future__ import annotations

import zlib

import pytest
import torch

from kernels.kv_quant import dequantize_kv, encoded_nbytes, quantize_kv

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
QMAX = {"int8": 127.0, "fp8": 448.0}
QDTYPE = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def make_x(tokens, heads, dim, dtype):
    # Magnitudes spread over ~6 orders within a group, so a group's scale is set by its outliers.
    x = torch.randn(tokens, heads, dim) * torch.exp(torch.randn(tokens, heads, 1) * 2)
    return x.to(dtype)


def ref_scales(x, group, qmax):
    """Per (group, head) absmax / qmax, one token at a time."""
    out = torch.zeros(-(-x.shape[0] // group), x.shape[1])
    for t in range(x.shape[0]):
        out[t // group] = torch.maximum(out[t // group], x[t].float().abs().amax(dim=-1))
    return out / qmax


def per_token(scales, tokens, group):
    return torch.stack([scales[t // group] for t in range(tokens)]).unsqueeze(-1)


@pytest.mark.parametrize("encoding", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,group", [(37, 16), (16, 16), (17, 16), (1, 16), (23, 5), (9, 1)])
def test_round_trip_error_bound(encoding, dtype, tokens, group):
    heads, dim = 3, 64
    x = make_x(tokens, heads, dim, dtype)
    q, scales = quantize_kv(x, encoding, group)
    assert q.dtype == QDTYPE[encoding] and q.shape == x.shape
    assert scales.dtype == torch.float32 and scales.shape == (-(-tokens // group), heads)
    assert torch.equal(scales, ref_scales(x, group, QMAX[encoding]))

    qf = q.float()
    assert qf.abs().max() <= QMAX[encoding]
    # The absmax element of every (group, head) lands on +-qmax: the full range is used.
    group_qmax = ref_scales(qf, group, 1.0)
    assert torch.equal(group_qmax, torch.full_like(group_qmax, QMAX[encoding]))

    x32, s = x.float(), per_token(scales, tokens, group)
    deq = dequantize_kv(q, scales, encoding, group, torch.float32)
    err = (deq - x32).abs()
    if encoding == "int8":
        # Rounding to the nearest step of `scale` costs at most half a step; the float32
        # divide and multiply add ~2 * 127 * 2^-24 steps.
        bound = s * (0.5 + 3e-5)
        assert torch.all(err <= bound)
        assert (err / s).max() > 0.3  # the bound is near tight, so the test is not vacuous
    else:
        # e4m3 keeps 3 mantissa bits: normals (|x / scale| >= 2^-6) round within half an ulp,
        # 2^-4 of the value; subnormals sit on a grid of 2^-9, so within 2^-10 * scale.
        # Hence |err| <= 2^-4 |x| + 2^-10 scale (<= 2^-4 absmax), plus float32 rounding.
        bound = 2.0**-4 * x32.abs() + 2.0**-10 * s + 1e-6 * (x32.abs() + s)
        assert torch.all(err <= bound)
        normal = x32.abs() >= 2.0**-6 * s
        assert (err[normal] / x32.abs()[normal]).max() > 2.0**-5
    # Other output dtypes are the float32 result rounded once.
    for out_dtype in (torch.bfloat16, torch.float16):
        got = dequantize_kv(q, scales, encoding, group, out_dtype)
        assert got.dtype == out_dtype and torch.equal(got, deq.to(out_dtype))


@pytest.mark.parametrize("encoding", ["int8", "fp8"])
def test_zero_groups(encoding):
    x = make_x(40, 2, 64, torch.bfloat16)
    x[16:32, 1] = 0  # group 1, head 1
    q, scales = quantize_kv(x, encoding, 16)
    assert scales[1, 1] == 0 and torch.all(scales[[0, 1, 2], [0, 0, 0]] > 0)
    deq = dequantize_kv(q, scales, encoding, 16, torch.bfloat16)
    assert not deq.isnan().any()
    assert torch.all(deq[16:32, 1] == 0)

    zeros = torch.zeros(5, 2, 64)
    q, scales = quantize_kv(zeros, encoding, 16)
    assert torch.all(scales == 0) and torch.all(q.float() == 0)
    assert torch.equal(dequantize_kv(q, scales, encoding, 16, torch.float32), zeros)


def test_short_last_group_scales_from_its_own_tokens():
    x = torch.ones(17, 2, 64)
    x[16] = 4.0  # the lone token of the short last group
    x[3, 1, 5] = -8.0
    _, scales = quantize_kv(x, "int8", 16)
    assert torch.equal(scales, torch.tensor([[1.0, 8.0], [4.0, 4.0]]) / 127)


def test_empty_input():
    q, scales = quantize_kv(torch.zeros(0, 4, 64), "fp8", 16)
    assert q.shape == (0, 4, 64) and scales.shape == (0, 4)
    assert dequantize_kv(q, scales, "fp8", 16, torch.bfloat16).shape == (0, 4, 64)


def test_raw_passes_through():
    x = make_x(20, 2, 64, torch.bfloat16)
    q, scales = quantize_kv(x, "raw", 16)
    assert q is x and scales.shape == (0, 2) and scales.dtype == torch.float32
    assert torch.equal(dequantize_kv(q, scales, "raw", 16, torch.bfloat16), x)
    assert torch.equal(dequantize_kv(q, scales, "raw", 16, torch.float32), x.float())


@pytest.mark.parametrize("encoding", ["int8", "fp8"])
def test_encoded_nbytes(encoding):
    raw = encoded_nbytes(1024, 8, 64, "raw", 16, torch.bfloat16)
    assert raw == 1024 * 8 * 64 * 2
    assert raw / encoded_nbytes(1024, 8, 64, encoding, 16, torch.bfloat16) >= 1.9
    x = make_x(37, 3, 64, torch.bfloat16)
    q, scales = quantize_kv(x, encoding, 16)
    wire = q.numel() * q.element_size() + scales.numel() * scales.element_size()
    assert encoded_nbytes(37, 3, 64, encoding, 16, torch.bfloat16) == wire
    assert encoded_nbytes(37, 3, 64, "raw", 16, torch.bfloat16) == x.numel() * 2


def test_bad_inputs_raise():
    x = torch.randn(8, 2, 64)
    q, scales = quantize_kv(x, "int8", 4)
    with pytest.raises(ValueError, match="encoding must be one of"):
        quantize_kv(x, "int4", 4)
    with pytest.raises(ValueError, match="group_tokens must be a positive int"):
        quantize_kv(x, "int8", 0)
    with pytest.raises(ValueError, match=r"x must be \[num_tokens, kv_heads, head_dim\]"):
        quantize_kv(x[0], "int8", 4)
    with pytest.raises(ValueError, match="x must be float32, bfloat16 or float16"):
        quantize_kv(x.to(torch.int32), "int8", 4)
    with pytest.raises(ValueError, match="encoding must be one of"):
        dequantize_kv(q, scales, "nf4", 4, torch.float32)
    with pytest.raises(ValueError, match="needs q of dtype torch.float8_e4m3fn"):
        dequantize_kv(q, scales, "fp8", 4, torch.float32)
    with pytest.raises(ValueError, match=r"scales must be float32 \(2, 2\)"):
        dequantize_kv(q, scales[:1], "int8", 4, torch.float32)
    with pytest.raises(ValueError, match=r"scales must be float32 \(2, 2\)"):
        dequantize_kv(q, scales.double(), "int8", 4, torch.float32)
    with pytest.raises(ValueError, match=r"scales must be float32 \(1, 2\)"):
        dequantize_kv(q, scales, "int8", 8, torch.float32)
    with pytest.raises(ValueError, match=r"q must be \[num_tokens"):
        dequantize_kv(q[0], scales, "int8", 4, torch.float32)
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        dequantize_kv(q, scales, "int8", 4, torch.int8)
    with pytest.raises(ValueError, match="raw encoding takes floating q and empty scales"):
        dequantize_kv(x, scales, "raw", 4, torch.float32)
    with pytest.raises(ValueError, match="group_tokens must be a positive int"):
        encoded_nbytes(8, 2, 64, "int8", -1, torch.bfloat16)


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("encoding", ["int8", "fp8"])
def test_quantize_into_q_out(encoding, backend):
    x = torch.randn(37, 3, 16).to(torch.bfloat16)
    want_q, want_s = quantize_kv(x, encoding, 16, backend="torch")
    q_out = torch.full(x.shape, 5, dtype=torch.uint8).view(want_q.dtype)  # poisoned
    q, s = quantize_kv(x, encoding, 16, backend=backend, q_out=q_out)
    assert q is q_out
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)) and torch.equal(s, want_s)
    with pytest.raises(ValueError, match="q_out must be"):
        quantize_kv(x, encoding, 16, q_out=torch.empty(36, 3, 16).to(want_q.dtype))
    with pytest.raises(ValueError, match="q_out must be"):
        quantize_kv(x, "raw", 16, q_out=q_out)
