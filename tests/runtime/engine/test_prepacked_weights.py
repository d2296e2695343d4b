"""oneDNN-prepacked matmul weights (bf16/fp16 on CPU) change speed, never results."""
import dataclasses

import pytest
import torch

from runtime.engine import SamplingParams
from runtime.engine.model import _can_prepack, pack_linear_weights
from tiny_model import make_engine

pytestmark = pytest.mark.skipif(not _can_prepack(torch.bfloat16),
                                reason="oneDNN cannot prepack bf16 weights on this CPU")


def engine(path, dtype):
    return make_engine(path, dtype=dtype, num_blocks=128)


def test_bf16_engine_packs_and_matches_plain_weights(tiny_model_dir):
    packed = engine(tiny_model_dir, "bfloat16")
    assert packed.runner.weights.layers[0].qkv.is_mkldnn
    assert packed.runner.weights.lm_head.is_mkldnn
    plain = engine(tiny_model_dir, "bfloat16")
    plain.runner.weights = dataclasses.replace(
        plain.runner.weights,
        layers=[dataclasses.replace(lw, qkv=lw.qkv.to_dense(), o_proj=lw.o_proj.to_dense(),
                                    gate_up=lw.gate_up.to_dense(), down=lw.down.to_dense())
                for lw in plain.runner.weights.layers],
        lm_head=plain.runner.weights.lm_head.to_dense())
    prompts = [[5, 17, 42, 99, 3, 8, 250, 11], list(range(30, 70)), [9]]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True,
                            logprobs=3)
    a = packed.generate(prompt_token_ids=prompts, params=params)
    b = plain.generate(prompt_token_ids=prompts, params=params)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.logprobs for o in a] == [o.logprobs for o in b]


def test_float32_keeps_plain_weights(tiny_model_dir):
    eng = engine(tiny_model_dir, "float32")
    assert not eng.runner.weights.layers[0].qkv.is_mkldnn
    w = eng.runner.weights
    assert pack_linear_weights(w) is w
