"""The HTTP request's life around the dispatcher: `X-Request-Id` is honoured and echoed, and
a non-streaming request whose client disconnects is cancelled (its stream closed, which
aborts it on the workers), as a streaming one is."""

import asyncio
import json
import time

import httpx
import pytest
from fake_frontend import FakeDispatcher, FakeFrontend

from runtime.client import Client
from runtime.frontend.dispatch import _Attempt
from runtime.frontend.results import GenerationChunk, ServingError


@pytest.fixture(scope="module")
def http(frontend):
    with httpx.Client(base_url=frontend.http_url, timeout=30) as client:
        yield client


def test_a_given_x_request_id_names_the_request_and_is_echoed(http, frontend):
    body = {"prompt": "hi", "max_tokens": 1}
    r = http.post("/v1/completions", json=body, headers={"X-Request-Id": "trace-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42"
    assert r.json()["id"] == "cmpl-trace-42"
    assert frontend.dispatcher.admitted[-1].request_id == "trace-42"
    chat = http.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "stream": True},
        headers={"X-Request-Id": "trace-43"},
    )
    assert chat.headers["x-request-id"] == "trace-43" and '"id": "chatcmpl-trace-43"' in chat.text


def test_without_x_request_id_the_server_assigns_one_and_returns_it(http, frontend):
    r = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
    rid = r.headers["x-request-id"]
    assert len(rid) == 32 and r.json()["id"] == f"cmpl-{rid}"
    assert frontend.dispatcher.admitted[-1].request_id == rid
    # Every answer carries one, errors included.
    assert http.get("/nowhere").headers["x-request-id"]


def test_a_request_is_timed_from_its_receipt_before_it_is_tokenized(http, frontend):
    # Its TTFT, and admission's learned margin, count from when the server got it, as its
    # client's clock does; the tokenizer's time is inside.
    def over_grpc():
        with Client(frontend.grpc_url) as client:
            client.generate("hi", max_tokens=1)

    for send in (
        lambda: http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1}),
        over_grpc,
    ):
        before = time.monotonic()
        send()
        req = frontend.dispatcher.admitted[-1]
        assert req.received_at is not None and before <= req.received_at <= time.monotonic()
        assert _Attempt(req, "k").arrival == req.received_at


def test_a_bad_x_request_id_gets_400(http):
    r = http.post("/v1/completions", json={"prompt": "hi"}, headers={"X-Request-Id": "x" * 129})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith(
        "the x-request-id header: request_id must be at most 128 printable characters"
    )


class SlowDispatcher(FakeDispatcher):
    """Sends one token, then waits (as a long generation does); records how each ended."""

    def __init__(self, preparer):
        super().__init__(preparer)
        self.ended: dict[str, str] = {}

    async def generate(self, req, client_key="", deadline_s=None):
        self.admitted.append(req)
        try:
            yield GenerationChunk(req.request_id, [7], "a")
            await asyncio.sleep(60)
            self.ended[req.request_id] = "finished"
        except (GeneratorExit, asyncio.CancelledError):
            self.ended[req.request_id] = "cancelled"
            raise


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_whose_client_disconnects_is_cancelled(tiny_preparer, stream):
    dispatcher = SlowDispatcher(tiny_preparer)
    with FakeFrontend(tiny_preparer, dispatcher=dispatcher) as server:
        rid = f"gone-{stream}"
        with pytest.raises(httpx.ReadTimeout):
            with httpx.stream(
                "POST",
                f"{server.http_url}/v1/completions",
                json={"prompt": "hi", "max_tokens": 50, "stream": stream},
                headers={"X-Request-Id": rid},
                timeout=httpx.Timeout(30, read=1.0),
            ) as r:
                for _ in r.iter_bytes():
                    pass
        end = time.monotonic() + 5
        while rid not in dispatcher.ended and time.monotonic() < end:
            time.sleep(0.05)
        assert dispatcher.ended == {rid: "cancelled"}


class LosesItsWorkerMidStream(FakeDispatcher):
    async def generate(self, req, client_key="", deadline_s=None):
        yield GenerationChunk(req.request_id, [7], "a")
        raise ServingError("UNAVAILABLE", "no healthy decode worker; retry in 5 s")


def test_an_error_inside_a_stream_is_an_openai_error_object(tiny_preparer):
    with FakeFrontend(tiny_preparer, dispatcher=LosesItsWorkerMidStream(tiny_preparer)) as server:
        r = httpx.post(
            f"{server.http_url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
            timeout=30,
        )
    events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
    assert r.status_code == 200 and events[-1] == "[DONE]"
    assert json.loads(events[-2]) == {
        "error": {
            "message": "no healthy decode worker; retry in 5 s",
            "type": "server_error",
            "param": None,
            "code": 503,
        }
    }
