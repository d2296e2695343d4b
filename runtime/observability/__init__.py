"""Logs and traces: levelled, timestamped logs (text or JSON lines carrying the request id), an
access log, and OpenTelemetry spans per request exported over OTLP when an endpoint is set.

Beside the layers: every layer may use it; it imports nothing else of `runtime`.
"""

from runtime.observability.config import ObservabilityConfig
from runtime.observability.context import current_request_id, request_id_scope
from runtime.observability.logs import configure_logging
from runtime.observability.tracing import configure_tracing, shutdown_tracing

__all__ = [
    "ObservabilityConfig",
    "configure_logging",
    "configure_tracing",
    "current_request_id",
    "request_id_scope",
    "shutdown_tracing",
]
