"""The C++ CPU attention kernels (decode over the paged cache, causal prefill) vs float64."""

import pytest
import torch
from cpu_kernel_helpers import TOLERANCE, needs_compiler

from kernels import cpu
from kernels.attention import paged_decode_attention
from kernels.backend import use_backend


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
    q = torch.randn(batch, heads + 3, dim, generator=gen).to(dtype)[:, 1 : heads + 1]  # strided
    max_ctx = num_blocks * block_size // batch
    lens = torch.randint(1, max_ctx + 1, (batch,), generator=gen)
    lens[0] = 1  # the query's own KV only
    if batch > 1:
        lens[1] = block_size * (max_ctx // block_size)  # whole blocks exactly
    width = (max_ctx + block_size - 1) // block_size
    tables = torch.stack([torch.randperm(num_blocks, generator=gen)[:width] for _ in range(batch)])
    return q, k_cache, v_cache, tables, lens


# (batch, heads, kv_heads, dim, block_size): SmolLM2 and Llama-3 shapes take the AVX-512 path,
# the others (group > 8, dim not a multiple of 16) the portable one.
SHAPES = [
    (6, 9, 3, 64, 16),
    (3, 32, 8, 128, 16),
    (4, 8, 8, 32, 1),
    (2, 16, 1, 16, 4),
    (3, 20, 2, 64, 16),
    (3, 6, 2, 40, 8),
    (1, 12, 2, 96, 16),
]


@needs_compiler
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_paged_decode_attention_matches_float64(shape, dtype):
    gen = torch.Generator().manual_seed(hash((shape, str(dtype))) % 2**31)
    q, k_cache, v_cache, tables, lens = random_case(gen, *shape, dtype)
    scale = shape[3] ** -0.5
    out = torch.full_like(q.contiguous(), float("nan"))  # poisoned: every element is written
    cpu.ops().paged_decode_attention(q, k_cache, v_cache, tables, lens, scale, out)
    want = attention_f64(q, k_cache, v_cache, tables, lens, scale)
    assert not out.isnan().any()
    err = ((out.double() - want).norm() / want.norm()).item()
    assert err < TOLERANCE[dtype]
    # The dispatch function takes the same kernel, also for int32 tables.
    got = paged_decode_attention(
        q, k_cache, v_cache, tables.int(), lens.int(), scale, backend="cpu"
    )
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
def test_engine_on_the_cpu_kernel_gives_the_reference_paths_greedy_tokens(tiny_model_dir):
    from tiny_model import make_engine

    from runtime.engine import SamplingParams

    prompts = [
        [5, 17, 42, 99, 3, 8, 250, 11, 64, 7, 1, 2, 3],
        [200, 201, 202],
        [9],
        list(range(30, 80)),
    ]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    outputs = {}
    for name in ("torch", "cpu"):
        with use_backend(name):
            eng = make_engine(tiny_model_dir)  # float32: token-exact is expected
            outputs[name] = [
                o.token_ids for o in eng.generate(prompt_token_ids=prompts, params=params)
            ]
    assert outputs["cpu"] == outputs["torch"]


def causal_f64(q, k, v, scale):
    """Bottom-right causal attention in float64: query i of T sees keys 0..S - T + i."""
    t, h, _ = q.shape
    s, kvh, _ = k.shape
    kk, vv = (x.double().repeat_interleave(h // kvh, dim=1) for x in (k, v))
    scores = torch.einsum("thd,shd->hts", q.double(), kk) * scale
    visible = torch.arange(s)[None, :] <= torch.arange(t)[:, None] + (s - t)
    return torch.einsum("hts,shd->thd", scores.masked_fill(~visible, float("-inf")).softmax(-1), vv)


@needs_compiler
@pytest.mark.parametrize(
    "shape",
    [
        (256, 256, 9, 3, 64),
        (37, 100, 9, 3, 64),
        (1, 50, 8, 2, 128),
        (17, 17, 32, 8, 128),
        (9, 300, 4, 4, 64),
        (2, 3, 6, 1, 64),
    ],
    ids=str,
)
def test_prefill_attention_matches_float64(shape):
    from kernels.attention import causal_attention
    from kernels.backend import cpu_bf16_dot_available

    if not cpu_bf16_dot_available():
        pytest.skip("this CPU has no AVX512-BF16")
    t, s, h, kvh, d = shape
    gen = torch.Generator().manual_seed(t * 1000 + s)
    # Strided q (heads inside a fused projection) and k/v [S, kv, D] as gathered from a cache.
    q = (torch.randn(t, h + 2, d, generator=gen) * 2).bfloat16()[:, 1 : h + 1]
    k = torch.randn(s, kvh, d, generator=gen).bfloat16()
    v = torch.randn(s, kvh, d, generator=gen).bfloat16()
    want = causal_f64(q, k, v, d**-0.5)
    got = causal_attention(q, k, v, d**-0.5, backend="cpu")
    sdpa = causal_attention(q, k, v, d**-0.5, backend="torch")
    err = ((got.double() - want).norm() / want.norm()).item()
    sdpa_err = ((sdpa.double() - want).norm() / want.norm()).item()
    assert got.shape == (t, h, d) and not got.isnan().any()
    assert err < max(2 * sdpa_err, 3e-3)  # bf16 output rounding dominates both
