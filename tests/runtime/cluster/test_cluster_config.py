"""The cluster YAML boundary: examples load, typos and bad values are named, defaults hold."""

from pathlib import Path

import pytest

from runtime.cluster import ConfigError, load_cluster_config, parse_cluster_config
from runtime.cluster.actors import actor_options, worker_config

CONFIGS = Path(__file__).resolve().parents[3] / "runtime" / "configs"


def fake_resolve(path):
    return path or "/models/default"


def engine_of(config, role):
    e = worker_config(config, role, f"{role}-0").engine
    return (
        e.model.device,
        e.model.dtype,
        e.cache.block_size,
        e.cache.memory_gib,
        e.scheduler.max_num_seqs,
        e.scheduler.max_num_batched_tokens,
        e.num_threads,
        e.model.enforce_eager,
    )


# Per example and role: device, dtype, block size, cache GiB, max seqs, batched tokens,
# threads, enforce_eager, as each worker's engine would get them.
EXAMPLES = {
    "local": {
        "prefill": ("cpu", "float32", 16, 0.25, 64, 512, 1, False),
        "decode": ("cpu", "float32", 16, 0.25, 64, 512, 1, False),
    },
    "colocated": {"colocated": ("cpu", "float32", 16, 0.5, 64, 512, 2, False)},
    "multinode": {
        "prefill": ("cuda", "bfloat16", 16, 40, 32, 8192, None, True),
        "decode": ("cuda", "bfloat16", 16, 16, 256, 256, None, False),
    },
    "hetero": {
        "prefill": ("cuda", "bfloat16", 16, 8, 64, 8192, None, False),
        "decode": ("cpu", "bfloat16", 32, 4, 128, 512, 16, False),
    },
    "kuberay": {
        "prefill": ("cpu", "float32", 16, 1, 64, 512, 4, False),
        "decode": ("cpu", "float32", 16, 1, 64, 512, 4, False),
    },
}


def test_the_examples_are_the_ones_shipped():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_config_gives_each_worker_its_engine(name):
    config = load_cluster_config(CONFIGS / f"{name}.yaml", resolve_model=fake_resolve)
    assert config.mode == ("colocated" if name == "colocated" else "disaggregated")
    assert {role: engine_of(config, role) for role in EXAMPLES[name]} == EXAMPLES[name]


def test_engine_settings_reach_every_knob_of_the_engine_configs_and_nothing_else():
    from dataclasses import fields

    from runtime.config import (
        CacheConfig,
        EngineConfig,
        EngineSettings,
        ModelConfig,
        SchedulerConfig,
    )

    settings = {f.name for f in fields(EngineSettings)}
    knobs = (
        {f.name for f in fields(CacheConfig)}
        | {f.name for f in fields(SchedulerConfig)}
        | {"dtype", "device", "enforce_eager", "seed", "num_threads"}
    )
    assert settings == knobs
    every = set().union(
        *(
            {f.name for f in fields(c)}
            for c in (ModelConfig, CacheConfig, SchedulerConfig, EngineConfig)
        )
    )
    assert settings <= every


def test_local_example_is_one_prefill_and_one_decode_worker_on_cpu(monkeypatch):
    monkeypatch.delenv("TANDEM_KV_SECRET", raising=False)
    monkeypatch.setenv("TANDEM_API_KEY", "k3y")
    c = load_cluster_config(CONFIGS / "local.yaml", resolve_model=fake_resolve)
    assert [(p.role, p.replicas, p.num_gpus) for p in c.pools if p.replicas] == [
        ("prefill", 1, 0.0),
        ("decode", 1, 0.0),
    ]
    assert c.model.path == "/models/default" and c.model_name == "SmolLM2-135M-Instruct"
    assert c.api_key == "k3y" and len(c.kv.secret) >= 32  # a random per-serve secret
    assert c.ray.address is None and c.ray.num_cpus == 2


def test_served_name_defaults_to_the_path_given():
    c = parse_cluster_config(
        {"model": {"path": "/m/llama"}, "pools": {"colocated": {"replicas": 1}}},
        resolve_model=fake_resolve,
    )
    assert c.model_name == "/m/llama"


def test_pool_placement_becomes_ray_actor_options():
    c = load_cluster_config(CONFIGS / "multinode.yaml", resolve_model=fake_resolve)
    opts = actor_options(c.pool("prefill"))
    assert opts["num_gpus"] == 1 and opts["accelerator_type"] == "H100"
    wc = worker_config(c, "decode", "decode-3")
    assert wc.name == "decode-3" and wc.engine.role == "decode" and wc.kv.encoding == "fp8"
    assert wc.kv_bind_host == "0.0.0.0"


@pytest.mark.parametrize(
    "data,message",
    [
        ({"pools": {"prefill": {"replicas": 1}}}, "pools.decode.replicas >= 1"),
        ({"pools": {"colocated": {"replicas": 0}}}, "no workers"),
        (
            {"pools": {"colocated": {"replicas": 1}}, "engine": {"blok_size": 8}},
            "engine.blok_size: Unexpected keyword argument",
        ),
        (
            {"pools": {"colocated": {"replicas": 1}}, "kv_transfer": {"encoding": "zip"}},
            "kv_transfer.encoding",
        ),
        ({"pools": {"colocated": {"replicas": -1}}}, "pools.colocated.replicas"),
        ({}, "pools: Field required"),
        (
            {"pools": {"colocated": {"replicas": 1}}, "limits": {"max_stop_string": 4}},
            "limits.max_stop_string: Unexpected keyword argument",
        ),
        (
            {"pools": {"colocated": {"replicas": 1}}, "limits": {"max_request_bytes": 0}},
            "limits.max_request_bytes must be >= 1, got 0",
        ),
        (
            {"pools": {"colocated": {"replicas": 1}}, "server": {"tls": {"cert_file": "c.pem"}}},
            "server.tls needs cert_file and key_file",
        ),
        (
            {"pools": {"colocated": {"replicas": 1}}, "faults": {"kill_at": "nowhere"}},
            "faults.kill_at must be one of",
        ),
        (
            {"pools": {"colocated": {"replicas": 1, "engine": {"device": "cuda"}}}},
            "pools.colocated: device 'cuda' needs the pool's num_gpus >= 1",
        ),
        (
            {
                "pools": {
                    "prefill": {"replicas": 1, "engine": {"dtype": "int4"}},
                    "decode": {"replicas": 1},
                }
            },
            "pools.prefill: dtype must be one of",
        ),
        (
            {"pools": {"colocated": {"replicas": 1}}, "engine": {"block_size": 0}},
            "pools.colocated: block_size must be >= 1, got 0",
        ),
        (
            {"pools": {"colocated": {"replicas": 1, "engine": {"max_num_seqs": "many"}}}},
            "pools.colocated.engine.max_num_seqs",
        ),
        (
            {"pools": {"colocated": {"replicas": 1}}, "kv_transfer": {"chunk_bytes": 0}},
            "kv_transfer.chunk_bytes must be >= 1, got 0",
        ),
    ],
)
def test_bad_configs_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_cluster_config(data, resolve_model=fake_resolve)


def test_reliability_limits_and_faults_reach_their_configs():
    c = parse_cluster_config(
        {
            "pools": {"prefill": {"replicas": 1, "max_restarts": 3}, "decode": {"replicas": 1}},
            "server": {
                "recovery_timeout_s": 7,
                "shutdown_grace_s": 2,
                "max_streams_per_key": 9,
                "tls": {"cert_file": "c.pem", "key_file": "k.pem"},
            },
            "limits": {"max_stop_strings": 4, "max_request_bytes": 1024},
            "faults": {"kv_drop_chunk": True, "times": 2},
        },
        resolve_model=fake_resolve,
    )
    s = c.server
    assert (s.recovery_timeout_s, s.shutdown_grace_s, s.max_streams_per_key) == (7, 2, 9)
    assert (s.tls.cert_file, s.tls.key_file) == ("c.pem", "k.pem")
    assert actor_options(c.pool("prefill"))["max_restarts"] == 3
    assert actor_options(c.pool("decode"))["max_restarts"] == -1
    assert (c.limits.max_stop_strings, c.limits.max_request_bytes) == (4, 1024)
    assert c.limits.max_chat_messages == 1024  # the rest keep their defaults
    assert worker_config(c, "decode", "decode-0").faults.kv_drop_chunk


def test_every_kv_transfer_knob_is_reachable_and_unset_ones_keep_their_defaults():
    from dataclasses import fields

    from runtime.cluster.schema import KVSection
    from runtime.kv_transfer import KVTransferConfig

    knobs = {f.name for f in fields(KVTransferConfig)} - {"secret", "tls"}
    assert knobs <= set(KVSection.model_fields)
    c = parse_cluster_config(
        {
            "pools": {"colocated": {"replicas": 1}},
            "kv_transfer": {"group_tokens": 32, "max_concurrent_handoffs": 8},
        },
        resolve_model=fake_resolve,
    )
    assert (c.kv.group_tokens, c.kv.max_concurrent_handoffs) == (32, 8)
    assert c.kv.chunk_bytes == KVTransferConfig(secret="s").chunk_bytes
