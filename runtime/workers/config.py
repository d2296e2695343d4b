"""What one worker needs: its engine, its KV handoff side and how it is named and reached."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.config import EngineConfig
from runtime.faults import FaultConfig
from runtime.kv_transfer import KVTransferConfig
from runtime.observability import ObservabilityConfig


@dataclass(frozen=True)
class WorkerConfig:
    """`engine.role` picks the worker class. `kv` is required for prefill and decode workers.

    Decode workers bind their KV receiver on `kv_bind_host:kv_port` (port 0: ephemeral) and
    advertise `kv_advertise_host` (None: the bind host, or the node's IP when binding all
    interfaces). `stream_idle_timeout_s` closes a stream that sees no event for that long.
    `faults`: injected faults (chaos tests; none by default). `observability`: how the
    worker logs (when it runs as a Ray actor: its own process) and where it exports spans.
    """

    name: str
    engine: EngineConfig
    kv: KVTransferConfig | None = None
    kv_bind_host: str = "127.0.0.1"
    kv_port: int = 0
    kv_advertise_host: str | None = None
    stream_idle_timeout_s: float = 600.0
    faults: FaultConfig = FaultConfig()
    observability: ObservabilityConfig = ObservabilityConfig()

    def __post_init__(self) -> None:
        if self.engine.role in ("prefill", "decode") and self.kv is None:
            raise ValueError(f"a {self.engine.role} worker needs a KV transfer config (kv)")
