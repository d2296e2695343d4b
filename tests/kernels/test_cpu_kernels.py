"""The C++ CPU kernels (kernels/cpu): built on this machine, checked against float64 math."""
import dataclasses
import shutil

import pytest
import torch

from kernels import cpu
from kernels.attention import paged_decode_attention
from kernels.backend import use_backend, use_cpu_kernel

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")


def attention_f64(q, k_cache, v_cache, tables, lens, scale):
    """Per sequence, per head, in float64: softmax(q k^T * scale) v over the live context."""
    b, h, d = q.shape
    kvh = k_cache.shape[2]
    out = torch.empty(b, h, d, dtype=torch.float64)
    for i in range(b):
        n = int(lens[i])
        k = k_cache[tables[i]].reshape(-1, kvh, d)[:n].double()
        v = v_cache[tables[i]].reshape(-1, kvh, d)[:n].double()
        k, v = (x.repeat_interleave(h // kvh, dim=1) for x in (k, v))
        p = (torch.einsum("hd,thd->ht", q[i].double(), k) * scale).softmax(-1)
        out[i] = torch.einsum("ht,thd->hd", p, v)
    return out


def random_case(gen, batch, heads, kv_heads, dim, block_size, dtype, num_blocks=48):
    # The caches are slices of one [layers, 2, blocks, ...] tensor, as in the engine.
    cache = torch.randn(2, 2, num_blocks, block_size, kv_heads, dim, generator=gen).to(dtype)
    k_cache, v_cache = cache[1, 0], cache[1, 1]
    q = torch.randn(batch, heads + 3, dim, generator=gen).to(dtype)[:, 1:heads + 1]  # strided
    max_ctx = num_blocks * block_size // batch
    lens = torch.randint(1, max_ctx + 1, (batch,), generator=gen)
    lens[0] = 1                                    # the query's own KV only
    if batch > 1:
        lens[1] = block_size * (max_ctx // block_size)   # whole blocks exactly
    width = (max_ctx + block_size - 1) // block_size
    tables = torch.stack([torch.randperm(num_blocks, generator=gen)[:width]
                          for _ in range(batch)])
    return q, k_cache, v_cache, tables, lens


# (batch, heads, kv_heads, dim, block_size): SmolLM2 and Llama-3 shapes take the AVX-512 path,
# the others (group > 8, dim not a multiple of 16) the portable one.
SHAPES = [(6, 9, 3, 64, 16), (3, 32, 8, 128, 16), (4, 8, 8, 32, 1), (2, 16, 1, 16, 4),
          (3, 20, 2, 64, 16), (3, 6, 2, 40, 8), (1, 12, 2, 96, 16)]
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@needs_compiler
def test_the_library_builds_and_loads_here():
    assert cpu.ops() is not None, cpu.load_error()
    assert cpu.load_error() is None


@needs_compiler
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_paged_decode_attention_matches_float64(shape, dtype):
    gen = torch.Generator().manual_seed(hash((shape, str(dtype))) % 2**31)
    q, k_cache, v_cache, tables, lens = random_case(gen, *shape, dtype)
    scale = shape[3] ** -0.5
    out = torch.full_like(q.contiguous(), float("nan"))   # poisoned: every element is written
    cpu.ops().paged_decode_attention(q, k_cache, v_cache, tables, lens, scale, out)
    want = attention_f64(q, k_cache, v_cache, tables, lens, scale)
    assert not out.isnan().any()
    err = ((out.double() - want).norm() / want.norm()).item()
    assert err < TOLERANCE[dtype]
    # The dispatch function takes the same kernel, also for int32 tables.
    got = paged_decode_attention(q, k_cache, v_cache, tables.int(), lens.int(), scale,
                                 backend="cpu")
    assert torch.equal(got, out)


@needs_compiler
def test_bad_tables_are_refused_before_any_read():
    gen = torch.Generator().manual_seed(1)
    q, k_cache, v_cache, tables, lens = random_case(gen, 2, 9, 3, 64, 16, torch.bfloat16)
    out = torch.empty_like(q.contiguous())
    bad = tables.clone()
    bad[0, 0] = k_cache.shape[0]
    with pytest.raises(RuntimeError, match="is not a block of the cache"):
        cpu.ops().paged_decode_attention(q, k_cache, v_cache, bad, lens, 1.0, out)
    long = lens.clone()
    long[1] = tables.shape[1] * 16 + 1
    with pytest.raises(RuntimeError, match=r"context_lens\[1\]"):
        cpu.ops().paged_decode_attention(q, k_cache, v_cache, tables, long, 1.0, out)
    with pytest.raises(ValueError, match="must share one of"):
        paged_decode_attention(q.float(), k_cache, v_cache, tables, lens, 1.0, backend="cpu")


@needs_compiler
def test_auto_takes_the_cpu_kernel_for_half_precisions_only():
    assert use_cpu_kernel(torch.zeros(1, dtype=torch.bfloat16))
    assert use_cpu_kernel(torch.zeros(1, dtype=torch.float16))
    assert not use_cpu_kernel(torch.zeros(1))                      # float32: the reference
    assert use_cpu_kernel(torch.zeros(1), "cpu")
    with use_backend("torch"):
        assert not use_cpu_kernel(torch.zeros(1, dtype=torch.bfloat16))


def test_the_build_is_keyed_by_this_cpu(monkeypatch):
    key = cpu.build_key()
    monkeypatch.setattr(cpu, "_cpu_signature", lambda: "model name: another CPU\nflags: sse2")
    assert cpu.build_key() != key


def test_disabled_kernels_fall_back_with_a_reason(monkeypatch):
    from kernels import backend

    monkeypatch.setattr(cpu, "_state", {})
    monkeypatch.setattr(backend, "_cpu_ops", {})
    monkeypatch.setenv("TANDEM_CPU_KERNELS", "0")
    assert cpu.ops() is None
    assert "TANDEM_CPU_KERNELS=0" in cpu.load_error()
    assert not use_cpu_kernel(torch.zeros(1, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="unavailable"):
        use_cpu_kernel(torch.zeros(1), "cpu")


@needs_compiler
def test_engine_on_the_cpu_kernel_gives_the_reference_paths_greedy_tokens(tiny_model_dir):
    from runtime.engine import SamplingParams
    from tiny_model import make_engine

    prompts = [[5, 17, 42, 99, 3, 8, 250, 11, 64, 7, 1, 2, 3], [200, 201, 202], [9],
               list(range(30, 80))]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    outputs = {}
    for name in ("torch", "cpu"):
        with use_backend(name):
            eng = make_engine(tiny_model_dir)   # float32: token-exact is expected
            outputs[name] = [o.token_ids for o in eng.generate(prompt_token_ids=prompts,
                                                               params=params)]
    assert outputs["cpu"] == outputs["torch"]


@needs_compiler
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("with_residual", [True, False])
def test_fused_add_rms_norm_matches_the_reference(dtype, with_residual):
    from kernels.norm import fused_add_rms_norm, fused_add_rms_norm_ref

    gen = torch.Generator().manual_seed(7 + with_residual)
    for width in (576, 40):   # the vector path (multiples of 16) and the scalar one
        x = (torch.randn(37, width, generator=gen) * 3).to(dtype)
        residual = torch.randn(37, width, generator=gen).to(dtype) if with_residual else None
        weight = torch.randn(width, generator=gen).to(dtype)
        normed, new_residual = fused_add_rms_norm(x, residual, weight, 1e-5, backend="cpu")
        want_normed, want_residual = fused_add_rms_norm_ref(x, residual, weight, 1e-5)
        assert torch.equal(new_residual, want_residual)          # the add rounds like torch's
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
    for d in (64, 24):   # the vector path (half a multiple of 16) and the scalar one
        _check_rotary(gen, dtype, 11, 9, 3, d)


def _check_rotary(gen, dtype, t, heads, kv_heads, d):
    from kernels.rotary import apply_rotary_, apply_rotary_ref_

    qkv = torch.randn(t, (heads + 2 * kv_heads) * d, generator=gen).to(dtype)
    theta = torch.rand(t, 1, d, generator=gen) * 6
    cos, sin = theta.cos().to(dtype), theta.sin().to(dtype)
    sin[..., :d // 2] = -sin[..., :d // 2]
    want = qkv.clone()
    apply_rotary_ref_(want[:, :(heads + kv_heads) * d].view(t, heads + kv_heads, d), cos, sin)
    got = qkv.clone()
    qk = got[:, :(heads + kv_heads) * d].view(t, heads + kv_heads, d)   # strided, as in forward
    assert apply_rotary_(qk, cos, sin, backend="cpu") is qk
    assert torch.equal(got, want)                   # v's columns untouched, q and k rotated


@needs_compiler
def test_bf16_cpu_forward_on_the_cpu_kernels_follows_the_reference(tiny_model_dir):
    from runtime.engine import SamplingParams
    from tiny_model import make_engine

    prompts = [[5, 17, 42, 99, 3, 8, 250, 11], list(range(30, 70)), [9]]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=1)
    first = {}
    for name in ("torch", "auto"):
        with use_backend(name):
            eng = make_engine(tiny_model_dir, dtype="bfloat16")
            first[name] = [o.token_ids[:2] for o in eng.generate(prompt_token_ids=prompts,
                                                                 params=params)]
    # bf16 rounds differently in a fused op than in torch's unfused ones, so later tokens may
    # split at near-ties; the prefill's first tokens must agree.
    assert [t[0] for t in first["auto"]] == [t[0] for t in first["torch"]]


@needs_compiler
@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("shape", [(960, 576), (49152 // 16 + 5, 576), (576, 1536), (7, 64)],
                         ids=str)
def test_linear_small_batch_matches_float64(rows, shape):
    from kernels.linear import linear_small_batch, small_batch_kernel_available

    if not small_batch_kernel_available():
        pytest.skip("this CPU has no AVX512-BF16")
    gen = torch.Generator().manual_seed(rows * 7919 + shape[0])
    n, k = shape
    x = torch.randn(rows, k + 32, generator=gen).bfloat16()[:, 16:16 + k]   # strided rows
    w = torch.randn(n, k, generator=gen).bfloat16()
    bias = torch.randn(n, generator=gen).bfloat16()
    for b in (None, bias):
        got = linear_small_batch(x, w, b, backend="cpu")
        want = x.double() @ w.double().T + (0 if b is None else b.double())
        assert got.dtype == torch.bfloat16 and got.shape == (rows, n)
        # One rounding of a float32 sum to bfloat16: within half a bf16 ulp plus float32 noise.
        err = (got.double() - want).abs() / want.abs().clamp_min(1.0)
        assert err.max().item() < 2 ** -8
    # Five rows, float32 or a K that is not a multiple of 32 take the reference.
    x5 = torch.randn(5, k, generator=gen).bfloat16()
    assert torch.equal(linear_small_batch(x5, w, backend="cpu"), torch.nn.functional.linear(x5, w))


def _decode_stack_engines(path, **kw):
    from tiny_model import make_engine

    fast = make_engine(path, dtype="bfloat16", **kw)
    slow = make_engine(path, dtype="bfloat16", **kw)
    slow.runner.weights = dataclasses.replace(slow.runner.weights, decode_stack=None)
    return fast, slow


@needs_compiler
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_decode_layers_equal_the_per_op_layer_loop(tmp_path, arch):
    from kernels.linear import small_batch_kernel_available
    from runtime.engine import SamplingParams
    from tiny_model import make_tiny_model

    if not small_batch_kernel_available():
        pytest.skip("this CPU has no AVX512-BF16")
    # hidden 128, 4 heads of 32 (2 KV heads), intermediate 256: the GEMV's multiples of 32.
    path = make_tiny_model(tmp_path / arch, hidden_size=128, num_heads=4, num_kv_heads=2,
                           intermediate_size=256, arch=arch, seed=11)
    fast, slow = _decode_stack_engines(path)
    assert fast.runner.weights.decode_stack is not None
    assert (len(fast.runner.weights.decode_stack["qkv_bias"]) > 0) == (arch == "qwen2")
    assert (len(fast.runner.weights.decode_stack["q_norm"]) > 0) == (arch == "qwen3")
    calls = []
    real = cpu.ops().decode_layers
    from kernels import decoder
    original = decoder.cpu_kernels
    # Count the fast path's calls: 1..4 sequences decoding take it, prefill never does.
    decoder.cpu_kernels = lambda: type("Ops", (), {"decode_layers": staticmethod(
        lambda *a: calls.append(a[0].shape[0]) or real(*a))})
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
    from kernels.decoder import decode_layers
    from kernels.linear import small_batch_kernel_available

    if not small_batch_kernel_available():
        pytest.skip("this CPU has no AVX512-BF16")
    hd, h, kvh, d, inter = 64, 2, 1, 32, 64
    w = lambda *s: torch.randn(*s).bfloat16()  # noqa: E731
    stack = {"input_norm": [w(hd)], "qkv": [w((h + 2 * kvh) * d, hd)], "qkv_bias": [],
             "q_norm": [], "k_norm": [], "o_proj": [w(hd, h * d)], "post_norm": [w(hd)],
             "gate_up": [w(2 * inter, hd)], "down": [w(hd, inter)]}
    cache = torch.zeros(1, 2, 4, 4, kvh, d, dtype=torch.bfloat16)
    cos, sin = w(1, 1, d), w(1, 1, d)
    args = (cache, cos, sin)
    tail = (torch.tensor([[0, 1]]), torch.tensor([5]), h, kvh, 1e-5, 0.2)
    with pytest.raises(RuntimeError, match="is not a slot of the cache"):
        decode_layers(w(1, hd), stack, *args, torch.tensor([16]), *tail)
    hidden, residual = decode_layers(w(1, hd), stack, *args, torch.tensor([4]), *tail)
    assert hidden.shape == residual.shape == (1, hd) and not hidden.isnan().any()
    assert cache[0, :, 1, 0].abs().sum() > 0 and cache[0, :, 0].abs().sum() == 0



@needs_compiler
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
def test_silu_mul_matches_the_reference(dtype):
    from kernels.activation import silu_mul, silu_mul_ref

    gen = torch.Generator().manual_seed(5)
    for inter in (1536, 40):   # 16-lane body, and a scalar tail
        gate_up = (torch.randn(6, 2 * inter, generator=gen) * 4).to(dtype)
        got = silu_mul(gate_up, backend="cpu")
        want = silu_mul_ref(gate_up)
        assert got.shape == (6, inter) and got.dtype == dtype
        ulp = {torch.float32: 1e-6, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}[dtype]
        assert ((got.double() - want.double()).abs()
                <= 2 * ulp * want.double().abs() + 1e-6).all()
    with pytest.raises(ValueError, match="must be even"):
        silu_mul(torch.zeros(2, 5, dtype=dtype), backend="cpu")


def causal_f64(q, k, v, scale):
    """Bottom-right causal attention in float64: query i of T sees keys 0..S - T + i."""
    t, h, _ = q.shape
    s, kvh, _ = k.shape
    kk, vv = (x.double().repeat_interleave(h // kvh, dim=1) for x in (k, v))
    scores = torch.einsum("thd,shd->hts", q.double(), kk) * scale
    visible = torch.arange(s)[None, :] <= torch.arange(t)[:, None] + (s - t)
    return torch.einsum("hts,shd->thd", scores.masked_fill(~visible, float("-inf")).softmax(-1),
                        vv)


@needs_compiler
@pytest.mark.parametrize("shape", [(256, 256, 9, 3, 64), (37, 100, 9, 3, 64), (1, 50, 8, 2, 128),
                                   (17, 17, 32, 8, 128), (9, 300, 4, 4, 64), (2, 3, 6, 1, 64)],
                         ids=str)
def test_prefill_attention_matches_float64(shape):
    from kernels.attention import causal_attention
    from kernels.backend import cpu_bf16_dot_available

    if not cpu_bf16_dot_available():
        pytest.skip("this CPU has no AVX512-BF16")
    t, s, h, kvh, d = shape
    gen = torch.Generator().manual_seed(t * 1000 + s)
    # Strided q (heads inside a fused projection) and k/v [S, kv, D] as gathered from a cache.
    q = (torch.randn(t, h + 2, d, generator=gen) * 2).bfloat16()[:, 1:h + 1]
    k = torch.randn(s, kvh, d, generator=gen).bfloat16()
    v = torch.randn(s, kvh, d, generator=gen).bfloat16()
    want = causal_f64(q, k, v, d ** -0.5)
    got = causal_attention(q, k, v, d ** -0.5, backend="cpu")
    sdpa = causal_attention(q, k, v, d ** -0.5, backend="torch")
    err = ((got.double() - want).norm() / want.norm()).item()
    sdpa_err = ((sdpa.double() - want).norm() / want.norm()).item()
    assert got.shape == (t, h, d) and not got.isnan().any()
    assert err < max(2 * sdpa_err, 3e-3)   # bf16 output rounding dominates both


@needs_compiler
@pytest.mark.parametrize("encoding", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("shape,group", [((37, 3, 64), 16), ((5, 2, 40), 4), ((16, 8, 128), 16)],
                         ids=str)
def test_kv_quantization_is_bit_identical_to_the_reference(encoding, dtype, shape, group):
    from kernels.kv_quant import (dequantize_kv, dequantize_kv_ref, quantize_kv,
                                  quantize_kv_ref)

    gen = torch.Generator().manual_seed(shape[0] * 31 + group)
    x = (torch.randn(*shape, generator=gen) * torch.rand(shape[0], shape[1], 1, generator=gen)
         * 8).to(dtype)
    x[:group, 0] = 0          # an all-zero (group, head): scale 0, exact zeros back
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
    probe = torch.cat([values, mids, mids.nextafter(torch.tensor(0.0)),
                       mids.nextafter(torch.tensor(1e9))])
    probe = torch.cat([probe, torch.full((-probe.numel() % 16,), 448.0)])
    x = probe.view(-1, 1, 16)
    q, scales = quantize_kv(x, "fp8", x.shape[0], backend="cpu")
    want, want_scales = quantize_kv_ref(x, "fp8", x.shape[0])
    assert scales.item() == want_scales.item() == 1.0
    assert torch.equal(q.view(torch.uint8), want.view(torch.uint8))
