"""The frontend's spans (OpenTelemetry's in-memory exporter as the collector): one SERVER span
per HTTP or gRPC call, a child of the client's `traceparent`; the queue / prefill /
kv_handoff / decode spans from the workers' measurements under it; the trace context the
dispatcher hands the workers; the request id in the access log."""

from __future__ import annotations

import json
import logging
import time

import grpc
import httpx
import pytest
from fake_frontend import FakeDispatcher, FakeFrontend
from span_capture import CLIENT_SPAN_ID, CLIENT_TRACE_ID, CLIENT_TRACEPARENT, by_name, capture_spans

from runtime.api._proto import tandem_pb2 as pb
from runtime.api._proto import tandem_pb2_grpc as pb_grpc
from runtime.frontend.request_spans import record_stage_spans
from runtime.frontend.results import GenerationChunk, Timings, Usage
from runtime.observability.logs import ACCESS_LOGGER
from runtime.observability.tracing import current_traceparent
from runtime.workers.events import HandoffEvent

# What the workers "measured" for every request (seconds, bytes).
TIMINGS = dict(queue_s=0.05, prefill_s=0.2, decode_s=0.3, kv_transfer_s=0.1, kv_transfer_bytes=4096)
STAGES = ["queue", "prefill", "kv_handoff", "decode"]


class TracedDispatcher(FakeDispatcher):
    """Reports what a real dispatcher would: the trace context it passes to the prefill
    worker (`traceparents`) and the stage spans of each finished request."""

    def __init__(self, preparer):
        super().__init__(preparer)
        self.traceparents: list[str] = []
        self.ended_ns = 0

    async def generate(self, req, client_key: str = "", deadline_s=None):
        self.traceparents.append(current_traceparent())
        arrival = time.monotonic()
        timings = Timings(
            **TIMINGS, ttft_s=0.3, e2e_s=0.7, prefill_worker="prefill-0", decode_worker="decode-0"
        )
        usage = Usage(len(req.prompt_token_ids), 1)
        handoff = HandoffEvent(req.request_id, True, 0.1, 4096, encoding="int8")
        record_stage_spans(arrival, timings, usage, handoff, handoff_at=arrival + 0.4)
        yield GenerationChunk(req.request_id, [7], "a", "length", usage, timings)
        self.ended_ns = time.time_ns()  # streamed: resumed while the response body goes out


@pytest.fixture(scope="module")
def traced(tiny_preparer):
    dispatcher = TracedDispatcher(tiny_preparer)
    with FakeFrontend(tiny_preparer, dispatcher=dispatcher) as f:
        yield f, dispatcher


@pytest.fixture
def spans():
    exporter = capture_spans()
    yield exporter
    exporter.clear()


def finished(exporter, server_name: str) -> list:
    """The spans once the server span has ended (the client may read the response's last
    byte a moment before)."""
    deadline = time.monotonic() + 10
    while True:
        spans = exporter.get_finished_spans()
        if any(s.name == server_name for s in spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.01)


def check_trace(spans, server_name: str, trace_id: int, parent_span_id: int | None):
    """The one trace: its SERVER span under the client's span, and the four stage spans
    under it, laid out as the workers measured them."""
    found = by_name(spans)
    assert set(found) == {server_name, *STAGES}, set(found)
    server = found[server_name]
    assert server.kind.name == "SERVER"
    assert {s.context.trace_id for s in spans} == {trace_id}
    assert (server.parent.span_id if server.parent else None) == parent_span_id
    assert all(found[n].parent.span_id == server.context.span_id for n in STAGES)
    ms = {n: (found[n].end_time - found[n].start_time) / 1e6 for n in STAGES}
    assert ms == pytest.approx(
        {"queue": 50, "prefill": 200, "kv_handoff": 100, "decode": 300}, abs=2
    )
    assert found["prefill"].start_time == pytest.approx(found["queue"].end_time, abs=2e6)
    kv = found["kv_handoff"].attributes
    assert (kv["tandem.kv.bytes"], kv["tandem.kv.encoding"]) == (4096, "int8")
    assert (kv["tandem.kv.source"], kv["tandem.kv.target"]) == ("prefill-0", "decode-0")
    return server


def test_http_request_joins_the_clients_trace(traced, spans, caplog):
    frontend, dispatcher = traced
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    r = httpx.post(
        f"{frontend.http_url}/v1/completions",
        json={"model": "tiny", "prompt": "hi", "max_tokens": 1},
        headers={"traceparent": CLIENT_TRACEPARENT, "x-request-id": "my-request-1"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    server = check_trace(
        finished(spans, "POST /v1/completions"),
        "POST /v1/completions",
        CLIENT_TRACE_ID,
        CLIENT_SPAN_ID,
    )
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["tandem.request_id"] == "my-request-1"
    assert server.attributes["tandem.decode_worker"] == "decode-0"
    # What crosses the Ray call to the prefill worker: the client's trace, this span.
    assert (
        dispatcher.traceparents[-1] == f"00-{CLIENT_TRACE_ID:032x}-{server.context.span_id:016x}-01"
    )
    (access,) = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert (access.request_id, access.status, access.path) == (
        "my-request-1",
        200,
        "/v1/completions",
    )


def test_streamed_http_request_span_lasts_to_the_last_byte(traced, spans):
    frontend, dispatcher = traced
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 1, "stream": True}
    with httpx.stream("POST", f"{frontend.http_url}/v1/completions", json=body, timeout=30) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and json.loads(events[0][6:])["choices"][0]["text"] == "a"
    ended = finished(spans, "POST /v1/completions")
    server = by_name(ended)["POST /v1/completions"]
    assert server.parent is None  # no traceparent: a new trace
    check_trace(ended, "POST /v1/completions", server.context.trace_id, None)
    assert server.end_time >= dispatcher.ended_ns > server.start_time


def test_grpc_generate_joins_the_clients_trace(traced, spans):
    frontend, dispatcher = traced
    with grpc.insecure_channel(frontend.grpc_url) as channel:
        stub = pb_grpc.TandemStub(channel)
        request = pb.GenerateRequest(model="tiny", prompt="hi", request_id="grpc-req-9")
        request.params.max_tokens = 1
        responses = list(
            stub.Generate(request, metadata=[("traceparent", CLIENT_TRACEPARENT)], timeout=30)
        )
    assert responses[-1].finish_reason == pb.LENGTH
    server = check_trace(
        finished(spans, "/tandem.v1.Tandem/Generate"),
        "/tandem.v1.Tandem/Generate",
        CLIENT_TRACE_ID,
        CLIENT_SPAN_ID,
    )
    assert server.attributes["rpc.grpc.status_code"] == "OK"
    assert server.attributes["tandem.request_id"] == "grpc-req-9"
    assert dispatcher.traceparents[-1].split("-")[1:3] == [
        f"{CLIENT_TRACE_ID:032x}",
        f"{server.context.span_id:016x}",
    ]


def test_refused_grpc_call_is_traced_with_its_status(traced, spans, caplog):
    frontend, _ = traced
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    with grpc.insecure_channel(frontend.grpc_url) as channel:
        stub = pb_grpc.TandemStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Generate(pb.GenerateRequest(model="no-such-model", prompt="hi"), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (server,) = finished(spans, "/tandem.v1.Tandem/Generate")
    assert server.attributes["rpc.grpc.status_code"] == "INVALID_ARGUMENT"
    assert server.status.is_unset  # the client's mistake, not the server's failure
    (access,) = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert access.status == "INVALID_ARGUMENT" and access.request_id
