"""Sample and prompt logprobs against transformers' float32 log-softmax at the same positions,
and their invariance under chunked prefill, preemption, prefix caching and the P/D split."""

import pytest
import torch
from tiny_model import make_engine

from runtime.engine import SamplingParams

PROMPTS = [list(range(30, 61)), [5, 17, 42, 99, 3, 8, 250, 11], [200, 201]]
PARAMS = SamplingParams(
    temperature=0.8, seed=11, max_tokens=8, ignore_eos=True, logprobs=5, prompt_logprobs=3
)
TOL = 1e-4


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)


def hf_log_softmax(model, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab]: row p is the distribution of token p + 1."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def check_top(top, row: torch.Tensor, k: int) -> None:
    values, ids = row.topk(k)
    assert [t for t, _ in top] == ids.tolist()
    assert [v for _, v in top] == pytest.approx(values.tolist(), abs=TOL)


def test_sample_and_prompt_logprobs_match_transformers(tiny_model_dir, hf_model):
    outs = make_engine(tiny_model_dir).generate(prompt_token_ids=PROMPTS, params=PARAMS)
    for prompt, out in zip(PROMPTS, outs):
        ref = hf_log_softmax(hf_model, prompt + out.token_ids)
        p = len(prompt)
        assert len(out.logprobs) == len(out.token_ids) == 8
        for j, tok in enumerate(out.token_ids):
            assert out.logprobs[j] == pytest.approx(ref[p - 1 + j, tok].item(), abs=TOL)
            check_top(out.top_logprobs[j], ref[p - 1 + j], 5)
        assert out.prompt_logprobs[0] is None and out.prompt_top_logprobs[0] is None
        assert len(out.prompt_logprobs) == p
        for j in range(1, p):
            assert out.prompt_logprobs[j] == pytest.approx(ref[j - 1, prompt[j]].item(), abs=TOL)
            check_top(out.prompt_top_logprobs[j], ref[j - 1], 3)


def assert_same(outs, want) -> None:
    """Equal tokens and top ids; logprobs within float noise (sums differ in the last bits
    between batch shapes)."""
    for o, w in zip(outs, want, strict=True):
        assert o.token_ids == w.token_ids
        assert o.logprobs == pytest.approx(w.logprobs, abs=1e-5)
        assert o.prompt_logprobs[0] is None and w.prompt_logprobs[0] is None
        assert o.prompt_logprobs[1:] == pytest.approx(w.prompt_logprobs[1:], abs=1e-5)
        assert [[t for t, _ in top] for top in o.prompt_top_logprobs[1:]] == [
            [t for t, _ in top] for top in w.prompt_top_logprobs[1:]
        ]


def test_prompt_logprobs_survive_chunking_preemption_and_prefix_cache(tiny_model_dir):
    want = make_engine(tiny_model_dir).generate(prompt_token_ids=PROMPTS, params=PARAMS)
    chunked = make_engine(tiny_model_dir, budget=5)
    assert_same(chunked.generate(prompt_token_ids=PROMPTS, params=PARAMS), want)
    tight = make_engine(tiny_model_dir, num_blocks=14, block_size=4, prefix=False)
    assert_same(tight.generate(prompt_token_ids=PROMPTS, params=PARAMS), want)
    assert tight.scheduler.num_preemptions > 0
    cached = make_engine(tiny_model_dir)
    cached.generate(prompt_token_ids=PROMPTS, params=SamplingParams(max_tokens=1))
    # The prompts' blocks are cached now; a prompt-logprobs request still computes them all.
    assert_same(cached.generate(prompt_token_ids=PROMPTS, params=PARAMS), want)


def test_streamed_outputs_carry_prompt_logprobs_from_the_first_token(tiny_model_dir):
    eng = make_engine(tiny_model_dir, budget=8)  # the prompt takes four chunked steps
    outs = list(eng.stream(prompt_token_ids=PROMPTS[0], params=PARAMS))
    assert outs[0].new_token_ids and len(outs[0].prompt_logprobs) == len(PROMPTS[0])
    assert all(o.prompt_logprobs == outs[0].prompt_logprobs for o in outs)


def test_decode_side_logprobs_equal_colocated(tiny_model_dir):
    want = make_engine(tiny_model_dir).generate(prompt_token_ids=PROMPTS[:1], params=PARAMS)[0]
    prefill = make_engine(tiny_model_dir, role="prefill")
    decode = make_engine(tiny_model_dir, role="decode")
    first = prefill.generate(prompt_token_ids=PROMPTS[:1], params=PARAMS)[0]
    assert first.prompt_logprobs[1:] == pytest.approx(want.prompt_logprobs[1:], abs=1e-6)
    handle = first.kv_handle
    decode.import_kv(handle, prefill.export_kv(handle.request_id))
    prefill.release(handle.request_id)
    done = []
    while decode.has_unfinished_requests():
        done += [o for o in decode.step() if o.finished]
    out = done[0]
    assert out.token_ids == want.token_ids
    assert out.logprobs == pytest.approx(want.logprobs, abs=1e-6)
    assert out.top_logprobs[-1][0][0] == want.top_logprobs[-1][0][0]
