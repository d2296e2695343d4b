"""Pools with their own engine settings on one cluster: a float32 prefill pool (block size 4)
hands off to a bfloat16 decode pool (block size 8); the KV is converted on receive.

The oracle is the same two engines in one process (float32 prefill, its KV imported into a
bfloat16 decode engine): the KV a float32 prefill hands over, rounded to bfloat16, is not the
KV a bfloat16 prefill computes (0.1 apart in the tiny model's second layer), so a bfloat16
colocated run is no token-exact reference past the first few tokens. The conversion itself is
checked byte for byte in tests/runtime/kv_transfer."""

from __future__ import annotations

import pytest
from cluster_helpers import PROMPTS, tiny_cluster_config, wait_for_free_blocks

from runtime.client import Client
from runtime.cluster.background import BackgroundServer
from runtime.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from runtime.engine import Engine, SamplingParams

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    config = tiny_cluster_config(
        tiny_model_dir,
        {
            "prefill": {"replicas": 1, "num_cpus": 1, "engine": {"dtype": "float32"}},
            "decode": {
                "replicas": 1,
                "num_cpus": 1,
                "engine": {"dtype": "bfloat16", "block_size": 8},
            },
        },
    )
    assert config.engine_config("decode").cache.block_size == 8
    with BackgroundServer(config) as server:
        yield server


def engine(model_dir, role, dtype, block_size) -> Engine:
    return Engine(
        EngineConfig(
            model=ModelConfig(path=str(model_dir), dtype=dtype, max_model_len=512),
            cache=CacheConfig(block_size=block_size, num_blocks=256),
            scheduler=SchedulerConfig(max_num_batched_tokens=64),
            role=role,
            num_threads=1,
        )
    )


def in_process(model_dir, prompts) -> list[list[int]]:
    """Greedy tokens of a float32 prefill engine handing its KV to a bfloat16 decode one."""
    prefill = engine(model_dir, "prefill", "float32", 4)
    decode = engine(model_dir, "decode", "bfloat16", 8)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    order, done = [], {}
    for first in prefill.generate(prompt_token_ids=prompts, params=params):
        decode.import_kv(first.kv_handle, prefill.export_kv(first.request_id))
        prefill.release(first.request_id)
        order.append(first.request_id)
    while decode.has_unfinished_requests():
        done.update({o.request_id: o.token_ids for o in decode.step() if o.finished})
    return [done[rid] for rid in order]


def test_float32_prefill_hands_off_to_a_bfloat16_decode_pool(server, tiny_model_dir):
    prompts = [server.frontend.preparer.prompt_ids(prompt=p) for p in PROMPTS]
    with Client(server.grpc_url, timeout=60) as client:
        outs = [
            client.generate(
                prompt_token_ids=p, max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True
            )
            for p in prompts
        ]
    assert all(o.timings.kv_transfer_bytes > 0 for o in outs)
    assert [o.token_ids for o in outs] == in_process(tiny_model_dir, prompts)
    assert set(wait_for_free_blocks(server).values()) == {256}
