"""The engine on a tiny random Llama: parity with transformers, chunking, preemption, the split."""

import pytest
import torch
from tiny_model import make_engine

from runtime.engine import SamplingParams

PROMPTS = [
    [5, 17, 42, 99, 3, 8, 250, 11, 64, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
    [200, 201, 202],
    [9],
    list(range(30, 80)),
    [77, 66, 55, 44, 33, 22, 11, 100, 101, 102, 103, 104],
    list(range(100, 137)),
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def engine(path, num_blocks=256, **kw):
    return make_engine(path, num_blocks=num_blocks, max_seqs=64, **kw)


@pytest.fixture(scope="module")
def hf_reference(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model.generation_config.pad_token_id = 0
    refs = []
    for p in PROMPTS:
        out = model.generate(
            torch.tensor([p]), max_new_tokens=12, min_new_tokens=12, do_sample=False
        )
        refs.append(out[0, len(p) :].tolist())
    return refs


@pytest.fixture(scope="module")
def colocated(tiny_model_dir):
    return engine(tiny_model_dir)


def greedy_ids(eng, prompts=PROMPTS, params=GREEDY):
    return [o.token_ids for o in eng.generate(prompt_token_ids=prompts, params=params)]


def test_batched_greedy_matches_transformers(colocated, hf_reference):
    assert greedy_ids(colocated) == hf_reference
    assert colocated.block_manager.num_free_blocks == colocated.block_manager.num_blocks


def test_chunked_prefill_equals_unchunked(tiny_model_dir, hf_reference):
    eng = engine(tiny_model_dir, budget=7)
    assert greedy_ids(eng) == hf_reference


def test_preemption_recompute_equals_uninterrupted(tiny_model_dir, hf_reference):
    eng = engine(tiny_model_dir, num_blocks=24, block_size=4, prefix=False)
    outs = eng.generate(prompt_token_ids=PROMPTS, params=GREEDY)
    assert [o.token_ids for o in outs] == hf_reference
    assert eng.scheduler.num_preemptions > 0
    assert eng.block_manager.num_free_blocks == 24


def test_staggered_arrivals_match(tiny_model_dir, hf_reference):
    eng = engine(tiny_model_dir, budget=16)
    ids = {}
    pending = list(enumerate(PROMPTS))
    results = {}
    while pending or eng.has_unfinished_requests():
        if pending:
            i, p = pending.pop(0)
            ids[eng.add_request(params=GREEDY, prompt_token_ids=p)] = i
        for out in eng.step():
            if out.finished:
                results[ids[out.request_id]] = out.token_ids
    assert [results[i] for i in range(len(PROMPTS))] == hf_reference


def test_prefill_export_import_decode_equals_colocated(tiny_model_dir, hf_reference):
    prefill = engine(tiny_model_dir, role="prefill", block_size=4)
    decode = engine(tiny_model_dir, role="decode", block_size=8, num_blocks=64)
    free_p, free_d = prefill.block_manager.num_free_blocks, decode.block_manager.num_free_blocks
    outs = prefill.generate(prompt_token_ids=PROMPTS, params=GREEDY)
    for o in outs:
        assert not o.finished and len(o.token_ids) == 1 and o.kv_handle is not None
        decode.import_kv(o.kv_handle, prefill.export_kv(o.request_id))
        prefill.release(o.request_id)
    assert prefill.block_manager.num_free_blocks == free_p
    results = {}
    while decode.has_unfinished_requests():
        for out in decode.step():
            if out.finished:
                results[out.request_id] = out.token_ids
    assert [results[o.request_id] for o in outs] == hf_reference
    assert decode.block_manager.num_free_blocks == free_d


def test_prefix_cache_hits_give_identical_tokens(tiny_model_dir, hf_reference):
    eng = engine(tiny_model_dir, block_size=4)
    first = eng.generate(prompt_token_ids=[PROMPTS[3]], params=GREEDY)[0]
    again = eng.generate(prompt_token_ids=[PROMPTS[3]], params=GREEDY)[0]
    assert first.num_cached_tokens == 0
    assert again.num_cached_tokens == 48  # 50 tokens: 12 full blocks hit
    assert again.token_ids == first.token_ids == hf_reference[3]


def test_abort_frees_blocks_at_once(tiny_model_dir):
    eng = engine(tiny_model_dir)
    total = eng.block_manager.num_free_blocks
    rid = eng.add_request(params=SamplingParams(max_tokens=50), prompt_token_ids=PROMPTS[3])
    eng.step()
    assert eng.block_manager.num_free_blocks < total
    assert eng.abort(rid)
    assert eng.block_manager.num_free_blocks == total
    assert not eng.has_unfinished_requests()
    assert not eng.abort(rid)


def test_stream_deltas_concatenate_and_close_aborts(colocated):
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    outs = list(colocated.stream("Hello world", params))
    assert outs[-1].finished and outs[-1].finish_reason == "length"
    assert "".join(o.delta_text for o in outs) == outs[-1].text
    assert sum(len(o.new_token_ids) for o in outs) == 10
    it = colocated.stream("The quick brown fox", params)
    next(it)
    it.close()
    assert not colocated.has_unfinished_requests()
    assert colocated.block_manager.num_free_blocks == colocated.block_manager.num_blocks


def test_stop_token_ids_and_max_tokens(colocated, hf_reference):
    ref = hf_reference[0]
    stop_at = ref[4]
    out = colocated.generate(
        prompt_token_ids=[PROMPTS[0]],
        params=SamplingParams(
            temperature=0.0, max_tokens=12, stop_token_ids=[stop_at], ignore_eos=True
        ),
    )[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == ref[: ref.index(stop_at) + 1]
    out = colocated.generate(
        prompt_token_ids=[PROMPTS[0]], params=SamplingParams(temperature=0.0, max_tokens=3)
    )[0]
    assert out.finish_reason in ("length", "stop") and len(out.token_ids) <= 3


def test_stop_string_truncates_text(colocated):
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    full = colocated.generate(["Hello world"], params)[0].text
    assert len(full) > 4
    stop = full[2:4]
    out = colocated.generate(
        ["Hello world"],
        SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, stop=[stop]),
    )[0]
    assert out.finish_reason == "stop"
    assert out.text == full[: full.index(stop)]


def test_seeded_sampling_reproducible_and_survives_the_split(tiny_model_dir, colocated):
    params = SamplingParams(temperature=1.0, top_k=20, max_tokens=10, seed=1234, ignore_eos=True)
    a = colocated.generate(prompt_token_ids=[PROMPTS[0]], params=params)[0].token_ids
    b = colocated.generate(prompt_token_ids=[PROMPTS[1], PROMPTS[0]], params=params)[1].token_ids
    assert a == b
    prefill = engine(tiny_model_dir, role="prefill")
    decode = engine(tiny_model_dir, role="decode")
    o = prefill.generate(prompt_token_ids=[PROMPTS[0]], params=params)[0]
    decode.import_kv(o.kv_handle, prefill.export_kv(o.request_id))
    prefill.release(o.request_id)
    while decode.has_unfinished_requests():
        for out in decode.step():
            if out.finished:
                assert out.token_ids == a


@pytest.mark.parametrize(
    "prompt, message",
    [
        ([], "prompt is empty"),
        ([1] * 600, "shorten the prompt"),
        ([10**6], "prompt token ids must be in"),
    ],
)
def test_invalid_prompts_raise_clear_errors(colocated, prompt, message):
    with pytest.raises(ValueError, match=message):
        colocated.add_request(params=GREEDY, prompt_token_ids=prompt)
    assert not colocated.has_unfinished_requests()


def test_empty_text_prompt_rejected(colocated):
    with pytest.raises(ValueError, match="prompt is empty"):
        colocated.add_request("", GREEDY)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_other_architectures_match_transformers(tmp_path, arch):
    from tiny_model import make_tiny_model
    from transformers import AutoModelForCausalLM

    path = make_tiny_model(tmp_path / arch, arch=arch, tie=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.generation_config.pad_token_id = 0
    eng = engine(path)
    got = greedy_ids(eng, PROMPTS[:3])
    for p, g in zip(PROMPTS[:3], got):
        ref = model.generate(
            torch.tensor([p]), max_new_tokens=12, min_new_tokens=12, do_sample=False
        )[0, len(p) :].tolist()
        assert g == ref


def test_prefix_cache_counts_the_tokens_looked_up_and_found(tiny_model_dir):
    eng = engine(tiny_model_dir, block_size=4)
    s = eng.scheduler
    eng.generate(prompt_token_ids=[PROMPTS[3]], params=GREEDY)
    assert (s.num_prefix_cache_queries, s.num_prefix_cache_hits) == (50, 0)
    again = eng.generate(prompt_token_ids=[PROMPTS[3], PROMPTS[1]], params=GREEDY)
    assert [o.num_cached_tokens for o in again] == [48, 0]
    assert (s.num_prefix_cache_queries, s.num_prefix_cache_hits) == (50 + 50 + 3, 48)


def test_token_gaps_are_the_engines_time_between_a_requests_tokens(tiny_model_dir):
    prefill = engine(tiny_model_dir, role="prefill", block_size=4)
    decode = engine(tiny_model_dir, role="decode", block_size=4)
    (first,) = prefill.generate(prompt_token_ids=[PROMPTS[0]], params=GREEDY)
    assert first.token_gaps_s == (None,)
    decode.import_kv(first.kv_handle, prefill.export_kv(first.request_id))
    prefill.release(first.request_id)
    outs = []
    while decode.has_unfinished_requests():
        outs += decode.step()
    gaps = [g for o in outs for g in o.token_gaps_s]
    # One per token sampled here; the first decoded token's predecessor was sampled on the
    # prefill engine, so it has none on this one.
    assert len(gaps) == sum(len(o.new_token_ids) for o in outs) == 11
    assert gaps[0] is None and all(g is not None and g > 0 for g in gaps[1:])
    t = outs[-1].timings  # this engine's: first_token is the first decoded here
    assert sum(gaps[1:]) == pytest.approx(t.finished - t.first_token, abs=1e-3)
