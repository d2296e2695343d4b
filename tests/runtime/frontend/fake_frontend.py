"""The real HTTP and gRPC frontends over a fake dispatcher, served from a background thread."""

from __future__ import annotations

import asyncio
import socket
import threading

import uvicorn

from runtime.frontend.grpc_service import TandemService, start_grpc_server
from runtime.frontend.http_app import build_app
from runtime.frontend.metrics import FrontendMetrics
from runtime.frontend.requests import PreparedRequest, RequestPreparer
from runtime.frontend.results import GenerationChunk, Timings, Usage
from runtime.kv_transfer._proto import kv_transfer_pb2 as kv_pb
from runtime.kv_transfer.handles import params_from_proto, params_to_proto

MAX_FAKE_TOKENS = 3


def check_admissible(req: PreparedRequest, preparer: RequestPreparer) -> None:
    """AssertionError unless the workers could run `req`: it fits the context, its prompt is
    in the vocabulary, and its state survives the KV handoff's wire unchanged."""
    p = req.params
    assert (
        0 < len(req.prompt_token_ids)
        and len(req.prompt_token_ids) + p.max_tokens <= preparer.max_model_len
    ), (len(req.prompt_token_ids), p.max_tokens)
    assert all(0 <= t < preparer.vocab_size for t in req.prompt_token_ids)
    wire = kv_pb.RequestState(
        prompt_token_ids=req.prompt_token_ids, output_token_ids=[0], params=params_to_proto(p)
    ).SerializeToString()
    assert params_from_proto(kv_pb.RequestState.FromString(wire).params) == p


class FakeDispatcher:
    """Stands in for the cluster: checks each request it is handed (`check_admissible`) and
    streams `min(max_tokens, 3)` tokens back. `admitted` keeps the requests, `violations`
    what failed the check (the request then fails, as it would on a worker)."""

    mode = "disaggregated"

    def __init__(self, preparer: RequestPreparer):
        self.preparer = preparer
        self.workers: dict = {}
        self.num_in_flight = 0
        self.admitted: list[PreparedRequest] = []
        self.violations: list[str] = []

    async def poll_loads(self) -> list:
        return []

    async def generate(self, req: PreparedRequest, client_key: str = "", deadline_s=None):
        try:
            check_admissible(req, self.preparer)
        except Exception as e:
            self.violations.append(f"{type(e).__name__}: {e} in {req!r}"[:2000])
            raise
        self.admitted.append(req)
        n = min(req.params.max_tokens, MAX_FAKE_TOKENS)
        for i in range(n):
            last = i == n - 1
            yield GenerationChunk(
                req.request_id,
                [7],
                "a",
                "length" if last else None,
                Usage(len(req.prompt_token_ids), n) if last else None,
                Timings() if last else None,
            )


class FakeFrontend:
    """`build_app` on uvicorn and `start_grpc_server`, over a `FakeDispatcher`, on their own
    event loop thread (as `BackgroundServer` serves a cluster). A context manager."""

    def __init__(self, preparer: RequestPreparer, api_key: str | None = None, dispatcher=None):
        self.preparer = preparer
        self.dispatcher = dispatcher or FakeDispatcher(preparer)
        self.api_key = api_key
        self.http_url = self.grpc_url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def run(self, coro, timeout: float | None = 30):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> None:
        metrics = FrontendMetrics()
        service = TandemService(self.dispatcher, self.preparer, metrics)
        self._grpc, port, _ = await start_grpc_server(service, "127.0.0.1", 0, self.api_key)
        self.grpc_url = f"127.0.0.1:{port}"
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.http_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = build_app(self.dispatcher, self.preparer, metrics, self.api_key)
        self._uvicorn = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._serving = asyncio.create_task(self._uvicorn.serve(sockets=[sock]))
        while not self._uvicorn.started:
            await asyncio.sleep(0.01)

    async def _stop(self) -> None:
        self._uvicorn.should_exit = True
        await self._grpc.stop(0)
        await self._serving

    def __enter__(self) -> "FakeFrontend":
        self._thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc) -> None:
        self.run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class BlockingTokenizer:
    """The tiny model's tokenizer, whose `encode` of the prompt "block" waits for `release`
    (10 s at most, so a frontend that wrongly waits on it still ends)."""

    def __init__(self, tokenizer):
        self.inner = tokenizer
        self.entered, self.release = threading.Event(), threading.Event()
        self.inside = False

    def get_vocab(self):
        return self.inner.get_vocab()

    def encode(self, text, **kwargs):
        if text == "block":
            self.inside = True
            self.entered.set()
            self.release.wait(10)
            self.inside = False
        return self.inner.encode(text, **kwargs)
