"""The KV channel carries the trace: the sender's `kv_send` span joins the `traceparent` it
is routed with, and the receiver's `kv_receive` span joins that one through the header, both
reporting the bytes and the wire encoding that moved."""

from __future__ import annotations

import time

from kv_handoff_helpers import GREEDY, PROMPTS
from span_capture import CLIENT_SPAN_ID, CLIENT_TRACE_ID, CLIENT_TRACEPARENT, capture_spans


def test_handoff_spans_chain_through_the_header(make_pair):
    spans = capture_spans()
    pair = make_pair()
    rid = pair.p_thread.call(pair.prefill.add_request, params=GREEDY, prompt_token_ids=PROMPTS[0])
    future = pair.sender.route(rid, pair.target, CLIENT_TRACEPARENT)
    pair.prefill_until([future])
    result = future.result()
    assert result.encoding == "raw" and result.num_bytes > 0
    deadline = time.monotonic() + 10
    while {s.name for s in spans.get_finished_spans()} < {"kv_send", "kv_receive"}:
        assert time.monotonic() < deadline, [s.name for s in spans.get_finished_spans()]
        time.sleep(0.01)
    found = {
        s.name: s for s in spans.get_finished_spans() if s.attributes["tandem.request_id"] == rid
    }
    send, receive = found["kv_send"], found["kv_receive"]
    assert send.context.trace_id == receive.context.trace_id == CLIENT_TRACE_ID
    assert send.parent.span_id == CLIENT_SPAN_ID
    assert receive.parent.span_id == send.context.span_id
    for span in (send, receive):
        assert span.attributes["tandem.kv.bytes"] == result.num_bytes
        assert span.attributes["tandem.kv.encoding"] == "raw"
        assert span.status.is_unset


def test_untraced_handoff_starts_no_trace_of_the_clients(make_pair):
    spans = capture_spans()
    pair = make_pair()
    rid = pair.p_thread.call(pair.prefill.add_request, params=GREEDY, prompt_token_ids=PROMPTS[1])
    future = pair.sender.route(rid, pair.target)
    pair.prefill_until([future])
    assert future.result().num_bytes > 0
    deadline = time.monotonic() + 10
    while (
        len([s for s in spans.get_finished_spans() if s.attributes["tandem.request_id"] == rid]) < 2
    ):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    send = next(
        s
        for s in spans.get_finished_spans()
        if s.name == "kv_send" and s.attributes["tandem.request_id"] == rid
    )
    assert send.parent is None and send.context.trace_id != CLIENT_TRACE_ID
