"""Heterogeneous pools in one process: a CUDA prefill engine hands off over the gRPC KV path to
a CPU decode engine. Needs CUDA; skipped cleanly without it."""
import pytest
import torch

from kv_handoff_helpers import GREEDY, PROMPTS, config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("layerwise_min_tokens,budget", [
    (10**9, 2048),   # each prompt after its prefill: packed on the device, copied to the message
    (1, 16),         # layer by layer over chunked-prefill steps, staged on the side stream
    (40, 64),        # mixed
])
def test_cuda_prefill_to_cpu_decode_equals_cpu_colocated(make_pair, colocated_reference,
                                                         layerwise_min_tokens, budget):
    pair = make_pair(prefill_kw={"device": "cuda", "budget": budget},
                     sender_cfg=config(layerwise_min_tokens=layerwise_min_tokens,
                                       chunk_bytes=4096))
    start = pair.free_blocks()
    submitted = [pair.submit(p) for p in PROMPTS]
    futures = [f for _, f in submitted]
    pair.prefill_until(futures)
    results = [f.result() for f in futures]
    assert [r.layerwise for r in results] == [len(p) >= layerwise_min_tokens for p in PROMPTS]
    outputs = pair.decode_all()
    assert [outputs[rid] for rid, _ in submitted] == colocated_reference
    assert pair.free_blocks() == start


def test_cuda_bf16_kv_arrives_exactly_in_a_cpu_fp32_cache(make_pair):
    pair = make_pair(prefill_kw={"device": "cuda", "dtype": "bfloat16", "block_size": 4},
                     decode_kw={"dtype": "float32", "block_size": 16})
    prompt = PROMPTS[6]
    out = pair.p_thread.call(pair.prefill.generate, prompt_token_ids=[prompt], params=GREEDY)[0]
    sent = pair.p_thread.call(lambda: [(layer, k.cpu(), v.cpu()) for layer, k, v
                                       in pair.prefill.export_kv(out.request_id)])
    pair.sender.send(out.kv_handle, pair.target).result(timeout=60)

    def imported():
        seq = pair.decode.requests[out.request_id].seq
        return [pair.decode.runner.read_kv(seq.block_table, len(prompt), layer)
                for layer in range(len(sent))]
    for (_, k, v), (k2, v2) in zip(sent, pair.d_thread.call(imported)):
        assert k.dtype == torch.bfloat16 and k2.dtype == torch.float32
        assert torch.equal(k2, k.float()) and torch.equal(v2, v.float())
