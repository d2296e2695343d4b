"""OpenTelemetry spans per request, exported over OTLP/gRPC when an endpoint is configured.

Trace context travels as W3C `traceparent` strings: from the client's HTTP header or gRPC
metadata into the frontend's span, from there as an argument of the Ray actor call to the
prefill worker, and in the KV handoff's header to the decode worker. Without an endpoint the
tracer is OpenTelemetry's no-op one: nothing is recorded, but a client's context still
passes through (a no-op span carries its parent's ids).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from runtime.observability.config import ObservabilityConfig

TRACER_NAME = "tandem"
_propagator = TraceContextTextMapPropagator()
_lock = threading.Lock()
_processors: dict[str, BatchSpanProcessor] = {}  # by endpoint: one exporter each per process


def configure_tracing(config: ObservabilityConfig, instance: str = "") -> bool:
    """Export this process's spans to `config.otlp_traces_endpoint` (no endpoint: nothing;
    returns whether spans are exported). `instance` names the process (`service.instance.id`:
    "frontend", a worker's name). When the process already has an SDK tracer provider (an
    application embedding Tandem, a test's in-memory one) the exporter joins it; otherwise
    a provider is installed. Idempotent per endpoint."""
    endpoint = config.otlp_traces_endpoint
    if not endpoint:
        return False
    with _lock:
        if endpoint in _processors:
            return True
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.startswith("https:"))
        processor = BatchSpanProcessor(exporter, schedule_delay_millis=1000)
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            attributes = {"service.name": config.service_name}
            if instance:
                attributes["service.instance.id"] = instance
            provider = TracerProvider(resource=Resource.create(attributes))
            trace.set_tracer_provider(provider)
        provider.add_span_processor(processor)
        _processors[endpoint] = processor
    return True


def shutdown_tracing(timeout_s: float = 5.0) -> None:
    """Send the spans still queued (a process about to exit would lose them) and stop the
    exporters `configure_tracing` added; a later `configure_tracing` starts new ones."""
    with _lock:
        processors = list(_processors.values())
        _processors.clear()
    for processor in processors:
        processor.force_flush(int(timeout_s * 1000))
        processor.shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def context_from_carrier(carrier: Mapping[str, str]) -> Context:
    """The trace context of lower-cased headers or metadata (`traceparent`, `tracestate`);
    an empty context when they carry none or an invalid one."""
    return _propagator.extract(carrier)


def context_from_traceparent(traceparent: str, tracestate: str = "") -> Context | None:
    """The context a `traceparent` string names; None (a new trace) for an empty one."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return _propagator.extract(carrier)


def traceparent_of(span: Span | None = None) -> tuple[str, str]:
    """(`traceparent`, `tracestate`) of `span` (default: the current one); ("", "") when
    there is no valid trace context."""
    carrier: dict[str, str] = {}
    ctx = trace.set_span_in_context(span) if span is not None else None
    _propagator.inject(carrier, context=ctx)
    return carrier.get("traceparent", ""), carrier.get("tracestate", "")


def current_traceparent() -> str:
    return traceparent_of()[0]


def start_span(
    name: str,
    traceparent: str = "",
    tracestate: str = "",
    attributes: Mapping | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    start_ns: int | None = None,
) -> Span:
    """A span (end it with `end_span`) whose parent is the `traceparent` context."""
    return tracer().start_span(
        name,
        context=context_from_traceparent(traceparent, tracestate),
        kind=kind,
        attributes=dict(attributes or {}),
        start_time=start_ns,
    )


def end_span(
    span: Span, error: str | None = None, attributes: Mapping | None = None, end_ns=None
) -> None:
    """Set `attributes`, mark the span failed with `error` if given, and end it."""
    if attributes:
        span.set_attributes(dict(attributes))
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end_ns)


def wall_ns(monotonic_s: float) -> int:
    """A `time.monotonic()` reading as epoch nanoseconds (spans carry wall-clock times)."""
    return time.time_ns() - int((time.monotonic() - monotonic_s) * 1e9)


def record_span(
    name: str, start_monotonic: float, end_monotonic: float, attributes: Mapping | None = None
) -> None:
    """A finished child span of the current one, from times measured earlier."""
    span = tracer().start_span(
        name, attributes=dict(attributes or {}), start_time=wall_ns(start_monotonic)
    )
    span.end(end_time=wall_ns(max(end_monotonic, start_monotonic)))
