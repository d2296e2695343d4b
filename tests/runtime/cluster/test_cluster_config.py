"""The cluster YAML boundary: examples load, typos and bad values are named, defaults hold."""
from pathlib import Path

import pytest

from runtime.cluster import ConfigError, load_cluster_config, parse_cluster_config
from runtime.workers.builder import actor_options, worker_config

CONFIGS = Path(__file__).resolve().parents[3] / "runtime" / "configs"


def fake_resolve(path):
    return path or "/models/default"


@pytest.mark.parametrize("name", ["local", "colocated", "multinode"])
def test_every_example_config_loads(name):
    config = load_cluster_config(CONFIGS / f"{name}.yaml", resolve_model=fake_resolve)
    assert config.mode == ("colocated" if name == "colocated" else "disaggregated")


def test_local_example_is_one_prefill_and_one_decode_worker_on_cpu(monkeypatch):
    monkeypatch.delenv("TANDEM_KV_SECRET", raising=False)
    monkeypatch.setenv("TANDEM_API_KEY", "k3y")
    c = load_cluster_config(CONFIGS / "local.yaml", resolve_model=fake_resolve)
    assert [(p.role, p.replicas, p.num_gpus) for p in c.pools if p.replicas] == [
        ("prefill", 1, 0.0), ("decode", 1, 0.0)]
    assert c.model.path == "/models/default" and c.model_name == "SmolLM2-135M-Instruct"
    assert c.api_key == "k3y" and len(c.kv.secret) >= 32    # a random per-serve secret
    assert c.ray.address is None and c.ray.num_cpus == 2


def test_served_name_defaults_to_the_path_given():
    c = parse_cluster_config({"model": {"path": "/m/llama"}, "pools": {"colocated":
                              {"replicas": 1}}}, resolve_model=fake_resolve)
    assert c.model_name == "/m/llama"


def test_pool_placement_becomes_ray_actor_options():
    c = load_cluster_config(CONFIGS / "multinode.yaml", resolve_model=fake_resolve)
    opts = actor_options(c.pool("prefill"))
    assert opts["num_gpus"] == 1 and opts["accelerator_type"] == "H100"
    wc = worker_config(c, "decode", 3)
    assert wc.name == "decode-3" and wc.engine.role == "decode" and wc.kv.encoding == "fp8"
    assert wc.kv_bind_host == "0.0.0.0"


@pytest.mark.parametrize("data,message", [
    ({"pools": {"prefill": {"replicas": 1}}}, "pools.decode.replicas >= 1"),
    ({"pools": {"colocated": {"replicas": 0}}}, "no workers"),
    ({"pools": {"colocated": {"replicas": 1}}, "engine": {"blok_size": 8}},
     "engine.blok_size: Extra inputs are not permitted"),
    ({"pools": {"colocated": {"replicas": 1}}, "kv_transfer": {"encoding": "zip"}},
     "kv_transfer.encoding"),
    ({"pools": {"colocated": {"replicas": -1}}}, "pools.colocated.replicas"),
    ({}, "pools: Field required"),
    ({"pools": {"colocated": {"replicas": 1}}, "limits": {"max_stop_string": 4}},
     "limits.max_stop_string: Unexpected keyword argument"),
    ({"pools": {"colocated": {"replicas": 1}}, "limits": {"max_request_bytes": 0}},
     "limits.max_request_bytes must be >= 1, got 0"),
    ({"pools": {"colocated": {"replicas": 1}}, "server": {"tls": {"cert_file": "c.pem"}}},
     "server.tls needs cert_file and key_file"),
    ({"pools": {"colocated": {"replicas": 1}}, "faults": {"kill_at": "nowhere"}},
     "faults.kill_at must be one of"),
])
def test_bad_configs_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_cluster_config(data, resolve_model=fake_resolve)


def test_reliability_limits_and_faults_reach_their_configs():
    c = parse_cluster_config({
        "pools": {"prefill": {"replicas": 1, "max_restarts": 3}, "decode": {"replicas": 1}},
        "server": {"recovery_timeout_s": 7, "shutdown_grace_s": 2, "max_streams_per_key": 9,
                   "tls": {"cert_file": "c.pem", "key_file": "k.pem"}},
        "limits": {"max_stop_strings": 4, "max_request_bytes": 1024},
        "faults": {"kv_drop_chunk": True, "times": 2}}, resolve_model=fake_resolve)
    s = c.server
    assert (s.recovery_timeout_s, s.shutdown_grace_s, s.max_streams_per_key) == (7, 2, 9)
    assert (s.tls.cert_file, s.tls.key_file) == ("c.pem", "k.pem")
    assert actor_options(c.pool("prefill"))["max_restarts"] == 3
    assert actor_options(c.pool("decode"))["max_restarts"] == -1
    assert (c.limits.max_stop_strings, c.limits.max_request_bytes) == (4, 1024)
    assert c.limits.max_chat_messages == 1024   # the rest keep their defaults
    assert worker_config(c, "decode", 0).faults.kv_drop_chunk
