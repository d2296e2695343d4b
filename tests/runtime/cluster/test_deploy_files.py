"""The Dockerfile and the KubeRay manifest agree with the project they deploy.

No container runtime or Kubernetes runs here, so these check what can go stale without one:
the image's torch pin and command, and that the manifest's worker groups offer exactly the
Ray resources the pools of the cluster file it serves ask for.
"""

import json
import re
import shlex
from pathlib import Path

import yaml

from runtime.cluster import load_cluster_config
from runtime.cluster.actors import actor_options

ROOT = Path(__file__).resolve().parents[3]
MANIFEST = ROOT / "runtime" / "deploy" / "kuberay" / "raycluster.yaml"


def fake_resolve(path):
    return path or "/models/default"


def _dockerfile() -> dict[str, list[str]]:
    """Instruction -> its arguments, one entry per line (continuations joined)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.setdefault(word.upper(), []).append(rest.strip())
    return found


def _image_config_path(args: list[str]) -> Path:
    config = args[args.index("--config") + 1]
    assert config.startswith("/app/"), "the image copies the project into /app"
    return ROOT / config.removeprefix("/app/")


def test_the_image_installs_the_pinned_torch_and_serves_a_shipped_config():
    docker = _dockerfile()
    pyproject = (ROOT / "pyproject.toml").read_text()
    pin = re.search(r'"(torch==[^"]+)"', pyproject).group(1)
    assert any(pin in run and "whl/cpu" in run for run in docker["RUN"])
    assert json.loads(docker["ENTRYPOINT"][0]) == ["tandem", "serve"]
    assert 'tandem = "runtime.cli:main"' in pyproject
    for copied in docker["COPY"]:
        for src in copied.split()[:-1]:
            assert (ROOT / src).exists(), f"the Dockerfile copies {src}, which is gone"
    args = json.loads(docker["CMD"][0])
    config = load_cluster_config(_image_config_path(args), resolve_model=fake_resolve)
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert config.mode == "disaggregated"


def _manifest():
    docs = list(yaml.safe_load_all(MANIFEST.read_text()))
    return next(d for d in docs if d["kind"] == "RayCluster"), [
        d for d in docs if d["kind"] == "Service"
    ]


def test_each_pool_lands_on_the_worker_group_that_offers_its_resource():
    cluster, _ = _manifest()
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    command = shlex.split(head["args"][0].split("exec ", 1)[1])
    assert command[:2] == ["tandem", "serve"]
    config = load_cluster_config(_image_config_path(command), resolve_model=fake_resolve)
    offered = {
        g["groupName"]: json.loads(json.loads(g["rayStartParams"]["resources"]))
        for g in cluster["spec"]["workerGroupSpecs"]
    }
    for pool in config.pools:
        if not pool.replicas:
            continue
        wanted = actor_options(pool)["resources"]
        assert offered[pool.role] == wanted, f"pool {pool.role} asks for {wanted}"
        group = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == pool.role)
        assert float(group["rayStartParams"]["num-cpus"]) >= pool.num_cpus
        assert group["maxReplicas"] >= (pool.max_replicas or pool.replicas)
    assert config.ray.address == "auto"
    # The head schedules no workers: every pool must be placed on a worker group.
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_the_service_and_probe_reach_the_ports_the_cluster_file_serves():
    cluster, services = _manifest()
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    command = shlex.split(head["args"][0].split("exec ", 1)[1])
    config = load_cluster_config(_image_config_path(command), resolve_model=fake_resolve)
    server = config.server
    ports = {p["name"]: p["targetPort"] for s in services for p in s["spec"]["ports"]}
    assert ports == {"http": server.http_port, "grpc": server.grpc_port}
    assert head["readinessProbe"]["httpGet"]["port"] == server.http_port
    assert server.host == "0.0.0.0"
