"""What overrides a cluster file (TANDEM_* variables, then `serve` flags) and what
`tandem serve --print-config` shows."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runtime.cluster import ConfigError, load_cluster_config
from runtime.cluster.overrides import env_overrides, merged

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "runtime" / "configs"


def same(path):
    return path or "/models/default"


def test_environment_variables_name_a_section_and_a_field():
    env = {
        "TANDEM_SERVER__HTTP_PORT": "9000",
        "TANDEM_POOLS__DECODE__REPLICAS": "3",
        "TANDEM_ENGINE__DTYPE": "bfloat16",
        "TANDEM_KV_TRANSFER__TLS": "null",
        "TANDEM_HOME": "/x",
        "TANDEM_API_KEY": "k",
        "OTHER__X": "1",
    }
    assert env_overrides(env) == {
        "server": {"http_port": 9000},
        "pools": {"decode": {"replicas": 3}},
        "engine": {"dtype": "bfloat16"},
        "kv_transfer": {"tls": None},
    }
    assert merged(
        {"server": {"host": "h", "http_port": 1}, "ray": {"num_cpus": 2}},
        {"server": {"http_port": 2}},
    ) == {"server": {"host": "h", "http_port": 2}, "ray": {"num_cpus": 2}}


def test_flags_beat_the_environment_which_beats_the_file():
    env = {
        "TANDEM_SERVER__HTTP_PORT": "9000",
        "TANDEM_SERVER__GRPC_PORT": "9001",
        "TANDEM_ENGINE__DTYPE": "bfloat16",
    }
    c = load_cluster_config(
        CONFIGS / "local.yaml",
        resolve_model=same,
        environ=env,
        overrides={"server": {"grpc_port": 7000}},
    )
    assert (c.server.http_port, c.server.grpc_port) == (9000, 7000)
    assert c.engine_config("decode").model.dtype == "bfloat16"
    with pytest.raises(ConfigError, match="server.http_port"):
        load_cluster_config(
            CONFIGS / "local.yaml", resolve_model=same, environ={"TANDEM_SERVER__HTTP_PORT": "many"}
        )
    with pytest.raises(ConfigError, match="server.htp_port: Extra inputs are not permitted"):
        load_cluster_config(
            CONFIGS / "local.yaml", resolve_model=same, environ={"TANDEM_SERVER__HTP_PORT": "1"}
        )


def print_config(*args, env=None):
    out = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "serve", *args, "--print-config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_print_config_shows_each_pools_engine_with_secrets_masked():
    import os

    env = {**os.environ, "TANDEM_AUTH__API_KEY": "s3cret-key", "TANDEM_SERVER__HTTP_PORT": "9"}
    view = print_config("--config", str(CONFIGS / "multinode.yaml"), "--grpc-port", "7000", env=env)
    workers = view["workers"]
    assert {
        r: (w["replicas"], w["engine"]["model"]["device"], w["engine"]["model"]["dtype"])
        for r, w in workers.items()
    } == {"prefill": (2, "cuda", "bfloat16"), "decode": (4, "cuda", "bfloat16")}
    assert workers["decode"]["engine"]["scheduler"]["max_num_seqs"] == 256
    assert (view["server"]["grpc_port"], view["server"]["http_port"]) == (7000, 9)
    assert view["api_key"] == view["kv"]["secret"] == "***"
    hetero = print_config("--config", str(CONFIGS / "hetero.yaml"))["workers"]
    assert (
        hetero["prefill"]["engine"]["model"]["device"],
        hetero["decode"]["engine"]["model"]["device"],
    ) == ("cuda", "cpu")
    assert hetero["decode"]["engine"]["cache"]["block_size"] == 32
