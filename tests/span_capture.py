"""The OpenTelemetry SDK's in-memory exporter as the tests' span collector."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

CLIENT_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN_ID = 0x00F067AA0BA902B7
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID:032x}-{CLIENT_SPAN_ID:016x}-01"


def capture_spans() -> InMemorySpanExporter:
    """A fresh exporter receiving every span this process ends from now on. The process's
    tracer provider is set once (OpenTelemetry allows no other): an SDK one, which each call
    adds its exporter to."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def by_name(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    """The spans by name (AssertionError if a name appears twice)."""
    names = [s.name for s in spans]
    assert len(set(names)) == len(names), names
    return {s.name: s for s in spans}
