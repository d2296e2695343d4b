"""Workers as plain classes (no Ray): colocated and prefill -> decode equal the engine."""

from __future__ import annotations

import threading
import time

import pytest

from runtime.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from runtime.engine import Engine, SamplingParams
from runtime.faults import FaultConfig
from runtime.kv_transfer import KVTransferConfig
from runtime.workers import ColocatedWorker, DecodeWorker, HandoffEvent, PrefillWorker, WorkerConfig

GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
PROMPTS = [[5, 17, 42, 99, 3, 8, 250, 11], [200, 201, 202], list(range(30, 70))]
KV = KVTransferConfig(secret="s3cret", deadline_s=20.0, layerwise_min_tokens=16)


def engine_config(path, role, num_blocks=128):
    return EngineConfig(
        model=ModelConfig(path=str(path)),
        role=role,
        num_threads=1,
        cache=CacheConfig(block_size=4, num_blocks=num_blocks),
        scheduler=SchedulerConfig(max_num_batched_tokens=32),
    )


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    engine = Engine(engine_config(tiny_model_dir, "colocated"))
    return [o.token_ids for o in engine.generate(prompt_token_ids=PROMPTS, params=GREEDY)]


@pytest.fixture(scope="module")
def pair(tiny_model_dir):
    decode = DecodeWorker(WorkerConfig("d0", engine_config(tiny_model_dir, "decode"), KV))
    prefill = PrefillWorker(WorkerConfig("p0", engine_config(tiny_model_dir, "prefill"), KV))
    yield prefill, decode
    prefill.close()
    decode.close()


def run_disaggregated(prefill, decode, rid, prompt, params=GREEDY):
    events = [
        ev for batch in prefill.prefill(rid, prompt, params, decode.kv_address) for ev in batch
    ]
    assert isinstance(events[-1], HandoffEvent) and events[-1].ok, events[-1]
    tokens = [t for ev in events[:-1] for t in ev.new_token_ids]
    decoded = [ev for batch in decode.stream(rid) for ev in batch]
    return tokens + [t for ev in decoded for t in ev.new_token_ids], events, decoded


def test_colocated_worker_streams_the_engines_tokens(tiny_model_dir, reference):
    worker = ColocatedWorker(WorkerConfig("c0", engine_config(tiny_model_dir, "colocated")))
    try:
        for i, prompt in enumerate(PROMPTS):
            events = [ev for batch in worker.generate(f"r{i}", prompt, GREEDY) for ev in batch]
            assert [t for ev in events for t in ev.new_token_ids] == reference[i]
            assert events[-1].finished and events[-1].finish_reason == "length"
            assert events[0].queue_s is not None and events[0].prefill_s is not None
            assert events[-1].decode_s is not None
        assert worker.load().num_running == 0
        assert worker.load().num_free_blocks == worker.load().num_total_blocks
    finally:
        worker.close()


def test_prefill_to_decode_equals_colocated(pair, reference):
    prefill, decode = pair
    for i, prompt in enumerate(PROMPTS):
        tokens, events, decoded = run_disaggregated(prefill, decode, f"pd{i}", prompt)
        assert tokens == reference[i]
        assert events[-1].num_bytes > 0 and decoded[-1].finish_reason == "length"
    assert prefill.num_free_blocks() == 128 and decode.num_free_blocks() == 128


def test_concurrent_requests_through_one_pair(pair, reference):
    prefill, decode = pair
    results = {}

    def one(i):
        results[i] = run_disaggregated(prefill, decode, f"cc{i}", PROMPTS[i % 3])[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [results[i] for i in range(6)] == [reference[i % 3] for i in range(6)]


def test_abort_mid_decode_frees_the_decode_blocks(pair):
    prefill, decode = pair
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    events = [ev for b in prefill.prefill("ab", PROMPTS[0], params, decode.kv_address) for ev in b]
    assert events[-1].ok
    stream = decode.stream("ab")
    next(stream)
    decode.abort("ab")
    rest = [ev for batch in stream for ev in batch]
    assert rest[-1].finish_reason == "abort"
    deadline = time.monotonic() + 5
    while decode.num_free_blocks() != 128:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert decode.load().num_running == 0


def test_bad_prompt_raises_value_error_and_leaves_nothing(pair):
    prefill, decode = pair
    with pytest.raises(ValueError, match="prompt token ids"):
        list(prefill.prefill("bad", [10**6], GREEDY, decode.kv_address))
    assert "bad" not in prefill.streams and prefill.num_free_blocks() == 128


def test_load_reports_prefix_cache_and_handoff_failure_totals(pair, reference):
    prefill, decode = pair
    before = prefill.load()
    prompt = list(range(100, 140))
    first = run_disaggregated(prefill, decode, "tot1", prompt)
    tokens, events, decoded = run_disaggregated(prefill, decode, "tot2", prompt)
    assert tokens == first[0]
    hits = events[0].num_cached_tokens
    assert hits > 0
    load = prefill.load()
    assert load.num_prefix_cache_queries - before.num_prefix_cache_queries == 80
    assert load.num_prefix_cache_hits - before.num_prefix_cache_hits == hits
    assert decode.load().num_prefix_cache_queries == 0  # imports look nothing up
    gaps = [g for ev in decoded for g in ev.token_gaps_s]
    assert len(gaps) == 9 and gaps[0] is None and all(g > 0 for g in gaps[1:])

    failed_before = dict(load.handoff_failures).get("DATA_LOSS", 0)
    prefill.set_faults(FaultConfig(kv_corrupt_chunk=True))
    try:
        events = [
            ev for b in prefill.prefill("bad", PROMPTS[2], GREEDY, decode.kv_address) for ev in b
        ]
    finally:
        prefill.set_faults(FaultConfig())
    assert not events[-1].ok and events[-1].code == "DATA_LOSS"
    deadline = time.monotonic() + 5
    while dict(prefill.load().handoff_failures).get("DATA_LOSS", 0) != failed_before + 1:
        assert time.monotonic() < deadline, prefill.load().handoff_failures
        time.sleep(0.01)
