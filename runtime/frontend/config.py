"""The frontend's configuration: where it listens, how it guards the API, what it serves."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.frontend.requests import RequestLimits
from runtime.kv_transfer import TLSConfig
from scheduler import SchedulerConfig


@dataclass(frozen=True)
class ServerConfig:
    """Where the frontend listens: gRPC (public API, health, reflection) and HTTP (OpenAI).

    `recovery_timeout_s`: how long a request whose worker died waits for a healthy one (the
    restarted worker, or another of its pool) before it ends with UNAVAILABLE.
    `shutdown_grace_s`: on SIGINT/SIGTERM, how long requests in flight may run on before they
    are ended with UNAVAILABLE (new ones are refused at once; a second signal ends it).
    `max_streams_per_key`: requests one API key may have in flight (all clients together
    when the API is open); past it RESOURCE_EXHAUSTED / HTTP 429. 0: no limit.
    `tls`: serve both ports over TLS with `cert_file` + `key_file` (PEM); `ca_file` and
    `server_name` are what local clients (the `--demo` request) trust and check.
    """

    host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_port: int = 8000
    recovery_timeout_s: float = 20.0
    shutdown_grace_s: float = 5.0
    max_streams_per_key: int = 512
    tls: TLSConfig | None = None

    def __post_init__(self) -> None:
        if self.tls is not None and not (self.tls.cert_file and self.tls.key_file):
            raise ValueError("server.tls needs cert_file and key_file")


@dataclass(frozen=True)
class FrontendConfig:
    """What one frontend needs: the served model's name (requests must use it) and local
    directory (its tokenizer), its `server` settings, the public API key (None: open), the
    `limits` on what one request may carry, and how requests are admitted and routed
    (`scheduler`)."""

    model_name: str
    model_path: str
    server: ServerConfig = field(default_factory=ServerConfig)
    api_key: str | None = None
    limits: RequestLimits = field(default_factory=RequestLimits)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
