"""The C++ CPU layer ops (RMSNorm, rotary, SiLU*up, small-batch GEMV) and the decode stack."""

import dataclasses

import pytest
import torch
from cpu_kernel_helpers import TOLERANCE, needs_compiler

from kernels import cpu
from kernels.backend import use_backend


@needs_compiler
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("with_residual", [True, False])
def test_fused_add_rms_norm_matches_the_reference(dtype, with_residual):
    from kernels.norm import fused_add_rms_norm, fused_add_rms_norm_ref

    gen = torch.Generator().manual_seed(7 + with_residual)
    for width in (576, 40):  # the vector path (multiples of 16) and the scalar one
        x = (torch.randn(37, width, generator=gen) * 3).to(dtype)
        residual = torch.randn(37, width, generator=gen).to(dtype) if with_residual else None
        weight = torch.randn(width, generator=gen).to(dtype)
        normed, new_residual = fused_add_rms_norm(x, residual, weight, 1e-5, backend="cpu")
        want_normed, want_residual = fused_add_rms_norm_ref(x, residual, weight, 1e-5)
        assert torch.equal(new_residual, want_residual)  # the add rounds like torch's
        err = (normed.double() - want_normed.double()).norm() / want_normed.double().norm()
        assert err.item() < {torch.float32: 1e-6, torch.bfloat16: 4e-3, torch.float16: 1e-3}[dtype]
    # A strided view (Qwen3's per-head q norm over the fused projection) gives the same rows.
    qk = torch.randn(5, 12, 64, generator=gen).to(dtype)
    head_weight = torch.randn(64, generator=gen).to(dtype)
    got, _ = fused_add_rms_norm(qk[:, :9], None, head_weight, 1e-6, backend="cpu")
    want, _ = fused_add_rms_norm(qk[:, :9].contiguous(), None, head_weight, 1e-6, backend="cpu")
    assert torch.equal(got, want)


@needs_compiler
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
def test_rotary_in_place_is_bit_identical_to_the_reference(dtype):
    gen = torch.Generator().manual_seed(3)
    for d in (64, 24):  # the vector path (half a multiple of 16) and the scalar one
        _check_rotary(gen, dtype, 11, 9, 3, d)


def _check_rotary(gen, dtype, t, heads, kv_heads, d):
    from kernels.rotary import apply_rotary_, apply_rotary_ref_

    qkv = torch.randn(t, (heads + 2 * kv_heads) * d, generator=gen).to(dtype)
    theta = torch.rand(t, 1, d, generator=gen) * 6
    cos, sin = theta.cos().to(dtype), theta.sin().to(dtype)
    sin[..., : d // 2] = -sin[..., : d // 2]
    want = qkv.clone()
    apply_rotary_ref_(want[:, : (heads + kv_heads) * d].view(t, heads + kv_heads, d), cos, sin)
    got = qkv.clone()
    qk = got[:, : (heads + kv_heads) * d].view(t, heads + kv_heads, d)  # strided, as in forward
    assert apply_rotary_(qk, cos, sin, backend="cpu") is qk
    assert torch.equal(got, want)  # v's columns untouched, q and k rotated


@needs_compiler
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
def test_silu_mul_matches_the_reference(dtype):
    from kernels.activation import silu_mul, silu_mul_ref

    gen = torch.Generator().manual_seed(5)
    for inter in (1536, 40):  # 16-lane body, and a scalar tail
        gate_up = (torch.randn(6, 2 * inter, generator=gen) * 4).to(dtype)
        got = silu_mul(gate_up, backend="cpu")
        want = silu_mul_ref(gate_up)
        assert got.shape == (6, inter) and got.dtype == dtype
        ulp = {torch.float32: 1e-6, torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
        assert ((got.double() - want.double()).abs() <= 2 * ulp * want.double().abs() + 1e-6).all()
    with pytest.raises(ValueError, match="must be even"):
        silu_mul(torch.zeros(2, 5, dtype=dtype), backend="cpu")


@needs_compiler
@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize(
    "shape", [(960, 576), (49152 // 16 + 5, 576), (576, 1536), (7, 64)], ids=str
)
def test_linear_small_batch_matches_float64(rows, shape):
    from kernels.backend import cpu_bf16_dot_available
    from kernels.linear import linear_small_batch

    if not cpu_bf16_dot_available():
        pytest.skip("this CPU has no AVX512-BF16")
    gen = torch.Generator().manual_seed(rows * 7919 + shape[0])
    n, k = shape
    x = torch.randn(rows, k + 32, generator=gen).bfloat16()[:, 16 : 16 + k]  # strided rows
    w = torch.randn(n, k, generator=gen).bfloat16()
    bias = torch.randn(n, generator=gen).bfloat16()
    for b in (None, bias):
        got = linear_small_batch(x, w, b, backend="cpu")
        want = x.double() @ w.double().T + (0 if b is None else b.double())
        assert got.dtype == torch.bfloat16 and got.shape == (rows, n)
        # One rounding of a float32 sum to bfloat16: within half a bf16 ulp plus float32 noise.
        err = (got.double() - want).abs() / want.abs().clamp_min(1.0)
        assert err.max().item() < 2**-8
    # Five rows, float32 or a K that is not a multiple of 32 take the reference.
    x5 = torch.randn(5, k, generator=gen).bfloat16()
    assert torch.equal(linear_small_batch(x5, w, backend="cpu"), torch.nn.functional.linear(x5, w))


@needs_compiler
def test_bf16_cpu_forward_on_the_cpu_kernels_follows_the_reference(tiny_model_dir):
    from tiny_model import make_engine

    from runtime.engine import SamplingParams

    prompts = [[5, 17, 42, 99, 3, 8, 250, 11], list(range(30, 70)), [9]]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=1)
    first = {}
    for name in ("torch", "auto"):
        with use_backend(name):
            eng = make_engine(tiny_model_dir, dtype="bfloat16")
            first[name] = [
                o.token_ids[:2] for o in eng.generate(prompt_token_ids=prompts, params=params)
            ]
    # bf16 rounds differently in a fused op than in torch's unfused ones, so later tokens may
    # split at near-ties; the prefill's first tokens must agree.
    assert [t[0] for t in first["auto"]] == [t[0] for t in first["torch"]]


def _decode_stack_engines(path, **kw):
    from tiny_model import make_engine

    fast = make_engine(path, dtype="bfloat16", **kw)
    slow = make_engine(path, dtype="bfloat16", **kw)
    slow.runner.weights = dataclasses.replace(slow.runner.weights, decode_stack=None)
    return fast, slow


@needs_compiler
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_decode_layers_equal_the_per_op_layer_loop(tmp_path, arch):
    from tiny_model import make_tiny_model

    from kernels.backend import cpu_bf16_dot_available
    from runtime.engine import SamplingParams

    if not cpu_bf16_dot_available():
        pytest.skip("this CPU has no AVX512-BF16")
    # hidden 128, 4 heads of 32 (2 KV heads), intermediate 256: the GEMV's multiples of 32.
    path = make_tiny_model(
        tmp_path / arch,
        hidden_size=128,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=256,
        arch=arch,
        seed=11,
    )
    fast, slow = _decode_stack_engines(path)
    assert fast.runner.weights.decode_stack is not None
    assert (len(fast.runner.weights.decode_stack["qkv_bias"]) > 0) == (arch == "qwen2")
    assert (len(fast.runner.weights.decode_stack["q_norm"]) > 0) == (arch == "qwen3")
    calls = []
    real = cpu.ops().decode_layers
    from kernels import decoder

    original = decoder.cpu_kernels
    # Count the fast path's calls: 1..4 sequences decoding take it, prefill never does.
    decoder.cpu_kernels = lambda: type(
        "Ops",
        (),
        {"decode_layers": staticmethod(lambda *a: calls.append(a[0].shape[0]) or real(*a))},
    )
    try:
        prompts = [[5, 17, 42, 99, 3, 8, 25, 11, 64, 7], [20, 21, 22], [9, 4], list(range(30, 70))]
        params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=2)
        got = fast.generate(prompt_token_ids=prompts, params=params)
    finally:
        decoder.cpu_kernels = original
    want = slow.generate(prompt_token_ids=prompts, params=params)
    assert calls and set(calls) <= {1, 2, 3, 4}
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    for a, b in zip(got, want):
        assert a.logprobs == pytest.approx(b.logprobs, abs=0.05)
    # The KV each path wrote is the same cache content.
    assert torch.equal(fast.runner.kv_cache, slow.runner.kv_cache)


@needs_compiler
def test_decode_layers_refuse_a_slot_outside_the_cache():
    from kernels.backend import cpu_bf16_dot_available
    from kernels.decoder import decode_layers

    if not cpu_bf16_dot_available():
        pytest.skip("this CPU has no AVX512-BF16")
    hd, h, kvh, d, inter = 64, 2, 1, 32, 64
    w = lambda *s: torch.randn(*s).bfloat16()  # noqa: E731
    stack = {
        "input_norm": [w(hd)],
        "qkv": [w((h + 2 * kvh) * d, hd)],
        "qkv_bias": [],
        "q_norm": [],
        "k_norm": [],
        "o_proj": [w(hd, h * d)],
        "post_norm": [w(hd)],
        "gate_up": [w(2 * inter, hd)],
        "down": [w(hd, inter)],
    }
    cache = torch.zeros(1, 2, 4, 4, kvh, d, dtype=torch.bfloat16)
    cos, sin = w(1, 1, d), w(1, 1, d)
    args = (cache, cos, sin)
    tail = (torch.tensor([[0, 1]]), torch.tensor([5]), h, kvh, 1e-5, 0.2)
    with pytest.raises(RuntimeError, match="is not a slot of the cache"):
        decode_layers(w(1, hd), stack, *args, torch.tensor([16]), *tail)
    hidden, residual = decode_layers(w(1, hd), stack, *args, torch.tensor([4]), *tail)
    assert hidden.shape == residual.shape == (1, hd) and not hidden.isnan().any()
    assert cache[0, :, 1, 0].abs().sum() > 0 and cache[0, :, 0].abs().sum() == 0
