"""One request, one trace, on a real 1 prefill + 1 decode cluster: the frontend's spans (the
in-memory exporter) cover queue, prefill, KV handoff and decode under the client's trace id,
and the workers' own handoff spans, exported over OTLP from their Ray actor processes to a
collector stub, join the same trace: the context crossed the actor call and the KV channel."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import httpx
import pytest
from cluster_helpers import tiny_cluster_config
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc
from span_capture import CLIENT_SPAN_ID, CLIENT_TRACE_ID, CLIENT_TRACEPARENT, by_name, capture_spans

from runtime.cluster.background import BackgroundServer

STAGES = ["queue", "prefill", "kv_handoff", "decode"]


class CollectorStub(otlp_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps every span with its process's resource."""

    def __init__(self):
        self.spans: list[tuple[dict, object]] = []  # (resource attributes, Span)
        self._lock = threading.Lock()

    def Export(self, request, context):
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans += [(resource, span) for span in scope.spans]
        return otlp.ExportTraceServiceResponse()

    def wait_for(self, names: set[str], trace_id: int, timeout_s: float = 30.0) -> dict:
        """name -> (resource, span) of the trace's spans once all of `names` arrived."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                found = {
                    s.name: (r, s)
                    for r, s in self.spans
                    if int.from_bytes(s.trace_id, "big") == trace_id
                }
            if names <= set(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


def attributes(span) -> dict:
    out = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, kind)
    return out


@pytest.fixture(scope="module")
def collector():
    stub = CollectorStub()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    otlp_grpc.add_TraceServiceServicer_to_server(stub, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield stub, f"http://127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture(scope="module")
def traced_cluster(tiny_model_dir, collector):
    spans = capture_spans()  # before the frontend starts: it serves from this process
    config = tiny_cluster_config(
        tiny_model_dir,
        {"prefill": {"replicas": 1, "num_cpus": 1}, "decode": {"replicas": 1, "num_cpus": 1}},
        observability={"otlp_traces_endpoint": collector[1], "service_name": "tandem-test"},
    )
    with BackgroundServer(config) as server:
        yield server, spans


def test_one_request_is_one_trace_across_frontend_actors_and_kv_channel(traced_cluster, collector):
    server, spans = traced_cluster
    r = httpx.post(
        f"{server.http_url}/v1/chat/completions",
        json={
            "model": server.frontend.preparer.model_name,
            "messages": [{"role": "user", "content": "The quick brown fox"}],
            "max_tokens": 4,
            "temperature": 0.0,
        },
        headers={"traceparent": CLIENT_TRACEPARENT},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    moved = r.json()["timings"]["kv_transfer_bytes"]
    assert moved > 0

    # The frontend's trace (in-memory exporter): the client's trace id, every stage under
    # the request's span.
    deadline = time.monotonic() + 10
    while not any(s.name == "POST /v1/chat/completions" for s in spans.get_finished_spans()):
        assert time.monotonic() < deadline, "the request's span never ended"
        time.sleep(0.01)
    found = by_name(list(spans.get_finished_spans()))
    assert set(found) == {"POST /v1/chat/completions", *STAGES}
    frontend = found["POST /v1/chat/completions"]
    assert {s.context.trace_id for s in found.values()} == {CLIENT_TRACE_ID}
    assert frontend.parent.span_id == CLIENT_SPAN_ID
    assert all(found[n].parent.span_id == frontend.context.span_id for n in STAGES)
    kv = found["kv_handoff"].attributes
    assert (kv["tandem.kv.bytes"], kv["tandem.kv.encoding"]) == (moved, "raw")
    assert (kv["tandem.kv.source"], kv["tandem.kv.target"]) == ("prefill-0", "decode-0")
    assert all(found[n].end_time > found[n].start_time for n in STAGES)

    # The workers' spans (OTLP from their actor processes) in the same trace: the prefill
    # worker's under the frontend's span (the context crossed the Ray call), the decode
    # worker's under that one (it crossed the KV channel in the handoff's header).
    worker_spans = collector[0].wait_for({"kv_send", "kv_receive"}, CLIENT_TRACE_ID)
    (send_resource, send), (receive_resource, receive) = (
        worker_spans["kv_send"],
        worker_spans["kv_receive"],
    )
    assert send_resource["service.instance.id"] == "prefill-0"
    assert receive_resource["service.instance.id"] == "decode-0"
    assert send_resource["service.name"] == "tandem-test"
    assert int.from_bytes(send.parent_span_id, "big") == frontend.context.span_id
    assert receive.parent_span_id == send.span_id
    assert attributes(send)["tandem.kv.bytes"] == moved
    assert attributes(send)["tandem.kv.encoding"] == "raw"
    assert attributes(receive)["tandem.kv.bytes"] == moved
    assert attributes(receive)["tandem.kv.encoding"] == "raw"
    assert send.status.code != send.status.STATUS_CODE_ERROR
