"""The YAML boundary: pydantic models that validate a cluster file into `ClusterConfig`.

Unknown keys are errors (a typo must not silently fall back to a default). Secrets come from
the file or, better, from environment variables named in it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.cluster.config import ClusterConfig, PoolConfig, RayConfig
from runtime.cluster.overrides import OverrideError, env_overrides, merged
from runtime.config import EngineSettings, ModelConfig
from runtime.faults import FaultConfig
from runtime.frontend.config import ServerConfig
from runtime.frontend.requests import RequestLimits
from runtime.kv_transfer import KVTransferConfig, TLSConfig
from runtime.model_store import DEFAULT_MODEL_NAME
from runtime.model_store import resolve_model as resolve_default_model
from runtime.observability import ObservabilityConfig
from scheduler import SchedulerConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Strict):
    path: str | None = None
    served_name: str | None = None
    max_model_len: int | None = Field(None, ge=1)


class PoolSection(_Strict):
    replicas: int = Field(0, ge=0)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    accelerator_type: str | None = None
    resources: dict[str, float] = {}
    max_concurrency: int = Field(128, ge=1)
    max_restarts: int = Field(-1, ge=-1)
    min_replicas: int | None = Field(None, ge=1)
    max_replicas: int | None = Field(None, ge=1)
    # The frozen settings themselves: pydantic checks names and types, the configs the values.
    engine: EngineSettings = EngineSettings()


class PoolsSection(_Strict):
    prefill: PoolSection = PoolSection()
    decode: PoolSection = PoolSection()
    colocated: PoolSection = PoolSection()


class TLSSection(_Strict):
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    server_name: str | None = None


class KVSection(_Strict):
    # The transfer's knobs: None leaves KVTransferConfig's default (declared there, once).
    encoding: Literal["raw", "int8", "fp8"] | None = None
    group_tokens: int | None = None
    chunk_bytes: int | None = None
    max_inflight_bytes: int | None = None
    deadline_s: float | None = None
    block_wait_s: float | None = None
    layerwise_min_tokens: int | None = None  # None: GPU prefill engines 512, CPU ones never
    max_concurrent_handoffs: int | None = None
    # Where the decode workers' receivers listen, and TLS on the channel.
    bind_host: str = "127.0.0.1"
    advertise_host: str | None = None
    tls: TLSSection | None = None

    def transfer_config(self, secret: str) -> KVTransferConfig:
        knobs = self.model_dump(exclude={"bind_host", "advertise_host", "tls"}, exclude_none=True)
        try:
            return KVTransferConfig(secret=secret, tls=_tls(self.tls), **knobs)
        except ValueError as e:
            raise ValueError(f"kv_transfer.{e}") from None


class ServerSection(_Strict):
    host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=0, le=65535)
    http_port: int = Field(8000, ge=0, le=65535)
    recovery_timeout_s: float = Field(20.0, gt=0)
    shutdown_grace_s: float = Field(5.0, ge=0)
    max_streams_per_key: int = Field(512, ge=0)
    tls: TLSSection | None = None


class AuthSection(_Strict):
    api_key: str | None = None
    api_key_env: str | None = "TANDEM_API_KEY"
    kv_secret: str | None = None
    kv_secret_env: str | None = "TANDEM_KV_SECRET"


class RaySection(_Strict):
    address: str | None = None
    # Whole CPUs: Ray refuses a node with a fractional CPU count.
    num_cpus: int | None = Field(None, gt=0)
    namespace: str = "tandem"


class FaultsSection(_Strict):
    kill_at: str | None = None
    kv_delay_s: float = Field(0.0, ge=0)
    kv_drop_chunk: bool = False
    kv_corrupt_chunk: bool = False
    kv_stall_s: float = Field(0.0, ge=0)
    kv_refuse_blocks: bool = False
    times: int = Field(1, ge=1)


class ClusterFile(_Strict):
    model: ModelSection = ModelSection()
    engine: EngineSettings = EngineSettings()
    pools: PoolsSection
    kv_transfer: KVSection = KVSection()
    server: ServerSection = ServerSection()
    auth: AuthSection = AuthSection()
    ray: RaySection = RaySection()
    faults: FaultsSection = FaultsSection()
    # The frozen configs themselves: pydantic checks their field names and types.
    limits: RequestLimits = RequestLimits()
    scheduler: SchedulerConfig = SchedulerConfig()
    observability: ObservabilityConfig = ObservabilityConfig()


class ConfigError(ValueError):
    """The cluster file is invalid; the message names each bad field."""


def _secret(value: str | None, env: str | None) -> str | None:
    return value or (os.environ.get(env) if env else None) or None


def _tls(section: TLSSection | None) -> TLSConfig | None:
    return TLSConfig(**section.model_dump()) if section else None


def to_cluster_config(f: ClusterFile, model_path: str, served_name: str) -> ClusterConfig:
    """The validated file as frozen configs; `model_path` is the resolved local directory."""
    kv = f.kv_transfer
    pools = tuple(
        PoolConfig(
            role,
            p.replicas,
            p.num_cpus,
            p.num_gpus,
            p.accelerator_type,
            tuple(sorted(p.resources.items())),
            p.max_concurrency,
            p.max_restarts,
            p.engine,
            p.min_replicas,
            p.max_replicas,
        )
        for role, p in (
            ("prefill", f.pools.prefill),
            ("decode", f.pools.decode),
            ("colocated", f.pools.colocated),
        )
    )
    # Without a configured secret, one per `serve`: every worker gets it through its config.
    kv_secret = _secret(f.auth.kv_secret, f.auth.kv_secret_env) or secrets.token_urlsafe(32)
    return ClusterConfig(
        model=ModelConfig(path=model_path, max_model_len=f.model.max_model_len),
        pools=pools,
        kv=kv.transfer_config(kv_secret),
        served_name=served_name,
        engine=f.engine,
        kv_bind_host=kv.bind_host,
        kv_advertise_host=kv.advertise_host,
        server=ServerConfig(**f.server.model_dump(exclude={"tls"}), tls=_tls(f.server.tls)),
        api_key=_secret(f.auth.api_key, f.auth.api_key_env),
        ray=RayConfig(**f.ray.model_dump()),
        faults=FaultConfig(**f.faults.model_dump()),
        limits=f.limits,
        scheduler=f.scheduler,
        observability=f.observability,
    )


def parse_cluster_config(
    data: dict | None,
    model: str | None = None,
    resolve_model=None,
    overrides: dict | None = None,
    environ: Mapping[str, str] | None = None,
) -> ClusterConfig:
    """Validate a parsed YAML mapping into a `ClusterConfig`; ConfigError names each bad field.

    Over the mapping go, in this order, the `TANDEM_<SECTION>__<FIELD>` variables of
    `environ` (default: the process's environment) and `overrides` (the command line's, in
    the file's shape). `model` overrides `model.path`. `resolve_model(path_or_None) -> Path`
    turns the model entry into a local directory (default:
    `runtime.model_store.resolve_model`, which fetches the default model once). The served
    name defaults to the path as given, as vLLM's does, or to the default model's name.
    """
    resolve_model = resolve_model or resolve_default_model
    try:
        data = merged(
            merged(data or {}, env_overrides(os.environ if environ is None else environ)),
            overrides or {},
        )
    except OverrideError as e:
        raise ConfigError(f"invalid cluster config: {e}") from None
    try:
        f = ClusterFile.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError("invalid cluster config:\n" + "\n".join(lines)) from None
    given = model or f.model.path
    name = f.model.served_name or given or DEFAULT_MODEL_NAME
    try:
        return to_cluster_config(f, str(resolve_model(given)), name)
    except ValueError as e:
        raise ConfigError(f"invalid cluster config: {e}") from None


def load_cluster_config(
    path: str | Path,
    model: str | None = None,
    resolve_model=None,
    overrides: dict | None = None,
    environ: Mapping[str, str] | None = None,
) -> ClusterConfig:
    """Read a cluster YAML file; see `parse_cluster_config`."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read cluster config {path}: {e}") from None
    return parse_cluster_config(data, model, resolve_model, overrides, environ)
