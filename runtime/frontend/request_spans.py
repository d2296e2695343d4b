"""The stage spans of a finished request: queue, prefill, KV handoff and decode.

The workers measure each stage (`Timings`); the frontend turns those measurements into child
spans of the request's frontend span, so one trace shows where the time went even when the
workers export nothing. The workers' own spans (`kv_send`, `kv_receive`) join the same trace
through the trace context the frontend hands them.
"""

from __future__ import annotations

from opentelemetry import trace

from runtime.frontend.results import Timings, Usage
from runtime.observability.tracing import record_span
from runtime.workers.events import HandoffEvent


def record_stage_spans(
    arrival: float,
    timings: Timings,
    usage: Usage,
    handoff: HandoffEvent | None = None,
    handoff_at: float = 0.0,
) -> None:
    """Children of the current span, on the `time.monotonic()` clock: `queue` and `prefill`
    from the request's `arrival` on (the worker's queue and prefill times), `kv_handoff`
    ending when the frontend heard of the `handoff` (at `handoff_at`; layer-wise streaming
    overlaps it with prefill), `decode` ending with the request (`arrival + e2e_s`)."""
    if not trace.get_current_span().is_recording():
        return
    queued = arrival + timings.queue_s
    prefilled = queued + timings.prefill_s
    ended = arrival + timings.e2e_s
    record_span("queue", arrival, queued, {"tandem.worker": timings.prefill_worker})
    record_span(
        "prefill",
        queued,
        prefilled,
        {
            "tandem.worker": timings.prefill_worker,
            "tandem.prompt_tokens": usage.prompt_tokens,
            "tandem.cached_prompt_tokens": usage.cached_prompt_tokens,
        },
    )
    if handoff is not None and handoff.ok and not handoff.finished_on_prefill:
        record_span(
            "kv_handoff",
            handoff_at - handoff.seconds,
            handoff_at,
            {
                "tandem.kv.bytes": handoff.num_bytes,
                "tandem.kv.encoding": handoff.encoding,
                "tandem.kv.source": timings.prefill_worker,
                "tandem.kv.target": timings.decode_worker,
            },
        )
    record_span(
        "decode",
        ended - timings.decode_s,
        ended,
        {
            "tandem.worker": timings.decode_worker,
            "tandem.completion_tokens": usage.completion_tokens,
        },
    )
    trace.get_current_span().set_attributes(
        {
            "tandem.prefill_worker": timings.prefill_worker,
            "tandem.decode_worker": timings.decode_worker,
            "tandem.ttft_s": timings.ttft_s,
            "tandem.prompt_tokens": usage.prompt_tokens,
            "tandem.completion_tokens": usage.completion_tokens,
        }
    )
