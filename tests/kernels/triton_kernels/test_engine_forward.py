"""The engine's forward over Triton kernels gives the torch path's greedy tokens.

forward_fused with every kernel on Triton (the GPU engine's path) against forward_fused on the
torch references (bit-identical to the CPU engine's `forward`, see
tests/runtime/engine/test_fused_forward.py), on a tiny random Llama: chunked prefill that
continues from the cache, then batched decode steps over shuffled blocks.
"""

import torch
from forward_harness import greedy_decode, load_model

from kernels.backend import use_backend
from runtime.engine.fused_forward import forward_fused

PROMPTS = [[5, 17, 42, 99, 3, 8, 250, 11, 64], [200, 201, 202], [9, 10], list(range(30, 47))]


def test_triton_forward_gives_torch_greedy_tokens(tiny_model_dir, device):
    weights, geometry = load_model(tiny_model_dir, "float32", device)
    with use_backend("torch"):
        want, want_logits = greedy_decode(
            forward_fused, weights, geometry, PROMPTS, 5, device=device
        )
    with use_backend("triton"):
        got, logits = greedy_decode(forward_fused, weights, geometry, PROMPTS, 5, device=device)
    assert got == want
    for a, b in zip(logits, want_logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
