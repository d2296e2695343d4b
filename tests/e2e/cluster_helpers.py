"""Helpers of the whole-cluster tests: a tiny-model cluster config and reference outputs."""

from __future__ import annotations

import time

import ray

from runtime.cluster import parse_cluster_config
from runtime.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from runtime.engine import Engine, SamplingParams

PROMPTS = [
    "The quick brown fox",
    "Paged attention keeps",
    "Hello world!",
    "Prefill is compute bound; decode is memory bound. " * 3,
]
NUM_BLOCKS = 256
# The engine section of `tiny_cluster_config`: small caches, one torch thread per worker.
ENGINE = {"block_size": 4, "num_blocks": NUM_BLOCKS, "max_num_batched_tokens": 64, "num_threads": 1}


def tiny_cluster_config(model_dir, pools: dict, **sections):
    """Ephemeral ports, small caches, one torch thread per worker (2 cores)."""
    data = {
        "model": {"path": str(model_dir), "max_model_len": 512},
        "engine": ENGINE,
        "pools": pools,
        "server": {"grpc_port": 0, "http_port": 0},
        "kv_transfer": {"layerwise_min_tokens": 16, "deadline_s": 20},
        "ray": {"num_cpus": 4},
    }
    data.update(sections)
    return parse_cluster_config(data)


def default_model_cluster_config(model_dir):
    """1 prefill + 1 decode worker of the default SmolLM2, ephemeral ports, one torch thread
    per worker, a small KV cache."""
    return parse_cluster_config(
        {
            "model": {"path": str(model_dir), "max_model_len": 512},
            "engine": {"memory_gib": 0.1, "num_threads": 1},
            "pools": {"prefill": {"replicas": 1}, "decode": {"replicas": 1}},
            "server": {"grpc_port": 0, "http_port": 0},
            "ray": {"num_cpus": 4},
        }
    )


def colocated_greedy(model_dir, prompts, max_tokens) -> list[list[int]]:
    """The colocated engine's greedy token ids for prompts, texts or token ids (the
    reference)."""
    engine = Engine(
        EngineConfig(
            model=ModelConfig(path=str(model_dir), max_model_len=512),
            cache=CacheConfig(block_size=4, num_blocks=NUM_BLOCKS),
            scheduler=SchedulerConfig(max_num_batched_tokens=64),
            num_threads=1,
        )
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    if prompts and isinstance(prompts[0], list):
        return [o.token_ids for o in engine.generate(prompt_token_ids=prompts, params=params)]
    return [o.token_ids for o in engine.generate(prompts, params)]


def transformers_greedy(model_dir, prompt_ids: list[int], max_tokens: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    out = model.generate(
        torch.tensor([prompt_ids]),
        max_new_tokens=max_tokens,
        do_sample=False,
        min_new_tokens=max_tokens,
    )
    return out[0, len(prompt_ids) :].tolist()


def wait_for_free_blocks(server, total: int = NUM_BLOCKS, timeout: float = 15.0) -> dict:
    """Every worker's free KV blocks once all are back to `total` (AssertionError otherwise)."""
    end = time.monotonic() + timeout
    while True:
        free = {w.name: ray.get(w.actor.num_free_blocks.remote()) for w in server.workers}
        if all(n == total for n in free.values()) or time.monotonic() > end:
            return free
        time.sleep(0.05)
