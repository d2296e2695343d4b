"""The cluster configuration: frozen dataclasses, built from a YAML file (see `schema`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.config import EngineConfig, EngineSettings, ModelConfig
from runtime.faults import FaultConfig
from runtime.frontend.config import FrontendConfig, ServerConfig
from runtime.frontend.requests import RequestLimits
from runtime.kv_transfer import KVTransferConfig
from runtime.observability import ObservabilityConfig
from scheduler import SchedulerConfig

POOL_ROLES = ("prefill", "decode", "colocated")


@dataclass(frozen=True)
class PoolConfig:
    """One pool of identical workers and where Ray may place them.

    `num_cpus`/`num_gpus`/`accelerator_type`/`resources` are Ray actor options, so prefill and
    decode can be pinned to different hardware (e.g. `accelerator_type: H100` for prefill,
    `resources: {decode_host: 1}` for decode). `max_concurrency` bounds the requests a worker
    streams at once (each holds one of its actor threads). Ray restarts a dead worker up to
    `max_restarts` times (-1: without limit). `engine` overrides the cluster's shared engine
    settings for this pool's workers (its device, dtype, cache, batching, threads).
    The pool balancer (`scheduler.balancer`) keeps the pool within `min_replicas` and
    `max_replicas` (None: 1 and `replicas`: without bounds it only moves workers between
    the pools).
    """

    role: str
    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    accelerator_type: str | None = None
    resources: tuple[tuple[str, float], ...] = ()
    max_concurrency: int = 128
    max_restarts: int = -1
    engine: EngineSettings = EngineSettings()
    min_replicas: int | None = None
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        if self.role not in POOL_ROLES:
            raise ValueError(f"pool role must be one of {POOL_ROLES}, got {self.role!r}")
        if self.replicas < 0:
            raise ValueError(f"pools.{self.role}.replicas must be >= 0, got {self.replicas}")
        if self.replicas and not self.bounds[0] <= self.replicas <= self.bounds[1]:
            raise ValueError(
                f"pools.{self.role}: min_replicas <= replicas <= max_replicas must hold, got "
                f"{self.bounds[0]} <= {self.replicas} <= {self.bounds[1]}"
            )

    @property
    def bounds(self) -> tuple[int, int]:
        """(min, max) replicas the balancer keeps the pool within."""
        lo = 1 if self.min_replicas is None else self.min_replicas
        return lo, self.replicas if self.max_replicas is None else self.max_replicas


@dataclass(frozen=True)
class RayConfig:
    """`address` None starts an embedded local Ray with `num_cpus` logical CPUs (None: what
    the pools ask for); "auto" or "ray://host:10001" joins an existing cluster."""

    address: str | None = None
    num_cpus: int | None = None
    namespace: str = "tandem"


@dataclass(frozen=True)
class ClusterConfig:
    """Everything `tandem serve` needs. `model.path` None means the default SmolLM2 model.

    `served_name` is the model name requests must use (None: the path as given, as vLLM
    does). `api_key` None leaves the public API open; the KV channel always needs `kv.secret`.
    `engine` holds the engine settings every pool shares (each pool may override them).
    `faults` are injected into every worker (chaos tests and drills; none by default).
    `limits` bound what one request may carry (see `RequestLimits`); `scheduler` says how
    requests are admitted and routed (see `SchedulerConfig`). `observability`: logs and
    traces of the frontend and every worker (see `ObservabilityConfig`).
    """

    model: ModelConfig
    pools: tuple[PoolConfig, ...]
    kv: KVTransferConfig
    served_name: str | None = None
    engine: EngineSettings = field(default_factory=EngineSettings)
    kv_bind_host: str = "127.0.0.1"
    kv_advertise_host: str | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
    api_key: str | None = None
    ray: RayConfig = field(default_factory=RayConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    limits: RequestLimits = field(default_factory=RequestLimits)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)

    def __post_init__(self) -> None:
        sizes = {p.role: p.replicas for p in self.pools}
        if len(sizes) != len(self.pools):
            raise ValueError("each pool role may appear once")
        disagg = sizes.get("prefill", 0) > 0 or sizes.get("decode", 0) > 0
        if disagg and (sizes.get("prefill", 0) < 1 or sizes.get("decode", 0) < 1):
            raise ValueError(
                "disaggregated serving needs pools.prefill.replicas >= 1 and "
                "pools.decode.replicas >= 1"
            )
        if disagg and sizes.get("colocated", 0):
            raise ValueError("give either prefill + decode pools or a colocated pool, not both")
        if not disagg and sizes.get("colocated", 0) < 1:
            raise ValueError(
                "no workers: set pools.prefill/decode.replicas or pools.colocated.replicas"
            )
        for pool in self.pools:
            if pool.replicas:
                self.engine_config(pool.role)  # a bad value fails here, named by its pool

    def engine_config(self, role: str) -> EngineConfig:
        """The engine config of `role`'s workers: the pool's overrides over the shared
        settings over each config's defaults. ValueError names the pool and the value."""
        pool = self.pool(role)
        try:
            config = pool.engine.over(self.engine).engine_config(self.model, role)
        except ValueError as e:
            raise ValueError(f"pools.{role}: {e}") from None
        if config.model.device.startswith("cuda") and pool.num_gpus <= 0:
            raise ValueError(
                f"pools.{role}: device {config.model.device!r} needs the pool's "
                f"num_gpus >= 1 (Ray gives a worker only the GPUs it reserves)"
            )
        return config

    @property
    def mode(self) -> str:
        return "colocated" if self.pool("colocated").replicas else "disaggregated"

    def pool(self, role: str) -> PoolConfig:
        for p in self.pools:
            if p.role == role:
                return p
        return PoolConfig(role, replicas=0)

    @property
    def model_name(self) -> str:
        return self.served_name or self.model.path

    def frontend_config(self) -> FrontendConfig:
        return FrontendConfig(
            self.model_name, self.model.path, self.server, self.api_key, self.limits, self.scheduler
        )
