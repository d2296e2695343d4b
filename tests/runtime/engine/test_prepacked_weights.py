"""oneDNN-prepacked matmul weights (bf16/fp16 on CPU) change speed, never results."""

import dataclasses

import pytest
import torch
from tiny_model import make_engine

from runtime.engine import SamplingParams
from runtime.engine.model import PackedLinear, _can_prepack, pack_linear_weights

pytestmark = pytest.mark.skipif(
    not _can_prepack(torch.bfloat16), reason="oneDNN cannot prepack bf16 weights on this CPU"
)


def engine(path, dtype):
    return make_engine(path, dtype=dtype, num_blocks=128)


def test_bf16_engine_packs_and_matches_plain_weights(tiny_model_dir):
    packed = engine(tiny_model_dir, "bfloat16")
    assert packed.runner.weights.layers[0].qkv.packed.is_mkldnn
    assert packed.runner.weights.lm_head.packed.is_mkldnn
    # Without the small-batch kernel's plain copies: every batch size takes oneDNN.
    for lw in packed.runner.weights.layers:
        for name in ("qkv", "o_proj", "gate_up", "down"):
            setattr(lw, name, PackedLinear(getattr(lw, name).packed, None))
    plain = engine(tiny_model_dir, "bfloat16")
    dense = lambda t: t.packed.to_dense()  # noqa: E731
    plain.runner.weights = dataclasses.replace(
        plain.runner.weights,
        layers=[
            dataclasses.replace(
                lw,
                qkv=dense(lw.qkv),
                o_proj=dense(lw.o_proj),
                gate_up=dense(lw.gate_up),
                down=dense(lw.down),
            )
            for lw in plain.runner.weights.layers
        ],
        lm_head=dense(plain.runner.weights.lm_head),
    )
    prompts = [[5, 17, 42, 99, 3, 8, 250, 11], list(range(30, 70)), [9]]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=3)
    a = packed.generate(prompt_token_ids=prompts, params=params)
    b = plain.generate(prompt_token_ids=prompts, params=params)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.logprobs for o in a] == [o.logprobs for o in b]


def test_float32_keeps_plain_weights(tiny_model_dir):
    eng = engine(tiny_model_dir, "float32")
    assert isinstance(eng.runner.weights.layers[0].qkv, torch.Tensor)
    w = eng.runner.weights
    assert pack_linear_weights(w) is w


def test_small_batches_read_the_plain_copy_only_within_the_memory_limit(tiny_model_dir):
    from kernels.backend import cpu_bf16_dot_available

    w = engine(tiny_model_dir, "bfloat16").runner.weights
    qkv = w.layers[0].qkv
    assert (qkv.dense is not None) == cpu_bf16_dot_available()
    if qkv.dense is not None:
        assert torch.equal(qkv.dense, qkv.packed.to_dense())
    plain = dataclasses.replace(
        w,
        layers=[
            dataclasses.replace(
                lw,
                **{
                    n: getattr(lw, n).packed.to_dense()
                    for n in ("qkv", "o_proj", "gate_up", "down")
                },
            )
            for lw in w.layers
        ],
        lm_head=w.lm_head.packed.to_dense(),
    )
    assert pack_linear_weights(plain, max_dense_gib=0.0).layers[0].qkv.dense is None
