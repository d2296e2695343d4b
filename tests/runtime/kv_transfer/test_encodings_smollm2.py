"""int8 and fp8 wire encodings against raw on the real SmolLM2: greedy continuations agree.

Agreement follows vLLM's `check_logprobs_close`: a compressed continuation agrees with raw's
when it is identical, or when it first departs at a near-tie, where each side's token is among
the other's top-5 logprobs (vLLM's fp8 KV-cache tests use the same check). Exact
token-for-token identity over 64 greedy tokens is not a fair bar for any lossy encoding on
this model: bf16 vs float32 weights alone change about a third of the tokens by that
measure, always at near-ties (bf16 logits often tie exactly). The test prints all three
figures.
"""

import pytest
from kv_handoff_helpers import config, make_engine

from runtime.engine import EngineThread, SamplingParams
from runtime.kv_transfer import KVReceiver, KVSender

TOPICS = [
    "the history of Rome",
    "how vaccines work",
    "the water cycle",
    "black holes",
    "the French Revolution",
    "photosynthesis",
    "machine learning",
    "the stock market",
    "volcanoes",
    "the human heart",
    "electric cars",
    "the Great Wall of China",
    "honey bees",
    "the internet",
    "climate change",
    "chess openings",
]
PARAMS = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True, logprobs=5)


def continuations(model_dir, encoding, prompts):
    """Hand off every prompt's KV with `encoding`, then decode all: outputs and bytes moved."""
    prefill = make_engine(model_dir, role="prefill", block_size=16, dtype="bfloat16")
    decode = make_engine(model_dir, role="decode", block_size=16, dtype="bfloat16")
    p_thread, d_thread = EngineThread("prefill"), EngineThread("decode")
    receiver = KVReceiver(decode, d_thread, config())
    target = f"127.0.0.1:{receiver.start()}"
    sender = KVSender(prefill, p_thread, config(encoding=encoding, layerwise_min_tokens=32))
    try:
        futures = []
        for p in prompts:
            rid = p_thread.call(prefill.add_request, params=PARAMS, prompt_token_ids=p)
            futures.append((rid, sender.route(rid, target)))
        while not all(f.done() for _, f in futures):
            p_thread.call(sender.step)
        num_bytes = sum(f.result().num_bytes for _, f in futures)
        outputs = {}
        while d_thread.call(decode.has_unfinished_requests):
            for out in d_thread.call(decode.step):
                if out.finished:
                    outputs[out.request_id] = out
        return [outputs[rid] for rid, _ in futures], num_bytes
    finally:
        sender.close()
        receiver.stop()
        p_thread.close()
        d_thread.close()


def agrees(ref, out) -> bool:
    for i, (a, b) in enumerate(zip(ref.token_ids, out.token_ids)):
        if a != b:
            return a in dict(out.top_logprobs[i]) and b in dict(ref.top_logprobs[i])
    return True


@pytest.fixture(scope="module")
def prompts(default_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(default_model_dir))
    return [
        tok.apply_chat_template(
            [{"role": "user", "content": f"Tell me about {t}."}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        for t in TOPICS
    ]


@pytest.fixture(scope="module")
def raw_run(default_model_dir, prompts):
    return continuations(default_model_dir, "raw", prompts)


@pytest.mark.model
@pytest.mark.parametrize("encoding", ["int8", "fp8"])
def test_compressed_handoff_agrees_with_raw(
    default_model_dir, prompts, raw_run, encoding, record_property
):
    raw, raw_bytes = raw_run
    got, got_bytes = continuations(default_model_dir, encoding, prompts)
    assert len(raw) == 16 and all(len(r.token_ids) == 64 for r in raw)
    agreement = sum(agrees(r, g) for r, g in zip(raw, got)) / len(raw)
    identical = sum(r.token_ids == g.token_ids for r, g in zip(raw, got))
    same_tokens = sum(a == b for r, g in zip(raw, got) for a, b in zip(r.token_ids, g.token_ids))
    figures = {
        "agreement": agreement,
        "identical": identical / 16,
        "positional_tokens": same_tokens / (16 * 64),
        "bytes_ratio": raw_bytes / got_bytes,
    }
    for name, value in figures.items():
        record_property(f"{encoding}_{name}", value)
    print(
        f"{encoding}: {agreement:.0%} of continuations agree with raw, {identical}/16 "
        f"identical, {same_tokens / 1024:.1%} of tokens equal by position; "
        f"{raw_bytes / got_bytes:.2f}x fewer bytes"
    )
    assert agreement >= 0.95
    assert raw_bytes / got_bytes >= 1.9
