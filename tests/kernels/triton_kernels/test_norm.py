"""Triton fused residual add + RMSNorm against the torch reference."""

import pytest
import torch

from kernels.norm import fused_add_rms_norm, fused_add_rms_norm_ref
from kernels.triton.norm import fused_add_rms_norm_triton

TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


@pytest.mark.parametrize("rows,hidden", [(1, 64), (7, 48), (3, 1000)])
def test_fused_add_rms_norm(device, dtype, poison, rows, hidden):
    x = torch.randn(rows, hidden).to(dtype).to(device)
    residual = (torch.randn(rows, hidden) * 4).to(dtype).to(device)
    weight = (1 + torch.randn(hidden) / 4).to(dtype).to(device)
    out = (poison(x.shape, dtype), poison(x.shape, dtype))
    normed, new_residual = fused_add_rms_norm_triton(x, residual, weight, 1e-6, out=out)
    want, want_residual = fused_add_rms_norm_ref(x, residual, weight, 1e-6)
    assert normed is out[0] and new_residual is out[1]
    assert torch.equal(new_residual, want_residual)  # the add rounds once, like the reference
    torch.testing.assert_close(normed, want, atol=TOL[dtype], rtol=TOL[dtype])


def test_plain_rms_norm_on_strided_heads(device, dtype):
    # Qwen3's per-head q norm: the input is a view of the q heads inside q|k.
    qk = torch.randn(5, 6, 32).to(dtype).to(device)
    weight = torch.randn(32).to(dtype).to(device)
    normed, residual = fused_add_rms_norm(qk[:, :4], None, weight, 1e-6, backend="triton")
    want, _ = fused_add_rms_norm(qk[:, :4], None, weight, 1e-6, backend="torch")
    assert residual is not None and torch.equal(residual, qk[:, :4])
    torch.testing.assert_close(normed, want, atol=TOL[dtype], rtol=TOL[dtype])


def test_bad_inputs_raise(device):
    x = torch.randn(2, 8, device=device)
    with pytest.raises(ValueError, match="weight"):
        fused_add_rms_norm(x, x, torch.ones(4, device=device), 1e-6, backend="triton")
    with pytest.raises(ValueError, match="residual must match"):
        fused_add_rms_norm(x, x.half(), torch.ones(8, device=device), 1e-6, backend="triton")
