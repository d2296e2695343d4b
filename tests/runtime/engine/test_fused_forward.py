"""forward_fused (the GPU engine's forward) on CPU references: forward's logits, bit for bit."""

import pytest
import torch
from forward_harness import greedy_decode, load_model

from runtime.engine.fused_forward import forward_fused
from runtime.engine.model import forward

PROMPTS = [[5, 17, 42, 99, 3, 8, 250, 11, 64], [200, 201, 202], [9, 10], list(range(30, 47))]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_forward_matches_forward_bit_for_bit(tiny_model_dir, dtype):
    weights, geometry = load_model(tiny_model_dir, dtype)
    ref_tokens, ref_logits = greedy_decode(forward, weights, geometry, PROMPTS, 6, dtype=dtype)
    tokens, logits = greedy_decode(forward_fused, weights, geometry, PROMPTS, 6, dtype=dtype)
    assert tokens == ref_tokens
    for a, b in zip(logits, ref_logits):
        assert torch.equal(a, b)


def test_fused_forward_qwen3_q_k_norms(tmp_path):
    from tiny_model import make_tiny_model

    weights, geometry = load_model(make_tiny_model(tmp_path / "q3", arch="qwen3"), "float32")
    ref_tokens, ref_logits = greedy_decode(forward, weights, geometry, PROMPTS, 4)
    tokens, logits = greedy_decode(forward_fused, weights, geometry, PROMPTS, 4)
    assert tokens == ref_tokens
    assert all(torch.equal(a, b) for a, b in zip(logits, ref_logits))
