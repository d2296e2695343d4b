"""The `observability` section of the cluster file: how the frontend and workers log and trace."""

from __future__ import annotations

from dataclasses import dataclass

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class ObservabilityConfig:
    """`log_format`: "text" (one readable line per record) or "json" (one JSON object per
    line: timestamp, level, logger, message and the request id of the request being served).
    `log_level`: the least severe level written. `access_log`: one line per HTTP or gRPC call
    (method, path, status, duration, request id). `otlp_traces_endpoint`: where spans go over
    OTLP/gRPC (e.g. "http://collector:4317"); None traces nothing, though a client's
    `traceparent` still reaches the workers. `service_name`: the traces' `service.name`."""

    log_format: str = "text"
    log_level: str = "info"
    access_log: bool = True
    otlp_traces_endpoint: str | None = None
    service_name: str = "tandem"

    def __post_init__(self) -> None:
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {LOG_FORMATS}, got {self.log_format!r}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}, got {self.log_level!r}")
        if self.otlp_traces_endpoint is not None and not self.otlp_traces_endpoint.strip():
            raise ValueError("otlp_traces_endpoint must be a URL such as http://host:4317")
        if not self.service_name:
            raise ValueError("service_name must not be empty")
