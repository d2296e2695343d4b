"""The frontend process: gRPC API + OpenAI HTTP on one asyncio loop, over the cluster's workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Callable, Coroutine

import grpc
import uvicorn
from grpc_health.v1 import health, health_pb2

from runtime.frontend.config import FrontendConfig
from runtime.frontend.dispatch import Dispatcher
from runtime.frontend.grpc_service import SERVICE_NAME, TandemService, start_grpc_server
from runtime.frontend.http_app import build_app
from runtime.frontend.metrics import FrontendMetrics
from runtime.frontend.requests import RequestPreparer
from runtime.frontend.results import Timings, Usage
from runtime.workers.handle import WorkerHandle
from scheduler import Router
from scheduler.balancer import Action

log = logging.getLogger(__name__)
LOAD_POLL_S = 0.2


class _EmbeddedUvicorn(uvicorn.Server):
    # The process owner handles SIGINT/SIGTERM (it must stop gRPC and Ray too).
    @contextlib.contextmanager
    def capture_signals(self):
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket for uvicorn (port 0: ephemeral, read back from the socket)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


class Frontend:
    """Serves one cluster: `await start()` binds both ports, `await stop()` drains and closes.

    `grpc_port` / `http_port` hold the bound ports once started.
    """

    def __init__(
        self,
        config: FrontendConfig,
        workers: list[WorkerHandle],
        preparer: RequestPreparer | None = None,
    ):
        self.config = config
        self.metrics = FrontendMetrics(config.model_name)
        s = config.server
        # Who else hears of each finished or refused request (the pool balancer).
        self.on_finished: list[Callable[[Timings, Usage, str], None]] = [
            self.metrics.observe_finished
        ]
        self.on_refused: list[Callable[[str], None]] = [self.metrics.observe_refused]
        self.actions: deque[Action] = deque(maxlen=32)  # the pool balancer's, for status
        self.dispatcher = Dispatcher(
            workers,
            Router(config.scheduler),
            on_finished=lambda *a: [f(*a) for f in self.on_finished],
            recovery_timeout_s=s.recovery_timeout_s,
            max_streams_per_key=s.max_streams_per_key,
            on_refused=lambda reason: [f(reason) for f in self.on_refused],
            on_inter_token=self.metrics.observe_inter_token,
        )
        self.metrics.track_in_flight(lambda: self.dispatcher.num_in_flight)
        max_len = min(w.max_model_len for w in workers)
        self.preparer = preparer or RequestPreparer.for_model(
            config.model_name, config.model_path, max_len, config.limits
        )
        self.grpc_port = self.http_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._uvicorn: _EmbeddedUvicorn | None = None
        self._tasks: list[asyncio.Task] = []
        self._serving: bool | None = None  # what health last said
        self._stopping = False

    @property
    def grpc_url(self) -> str:
        """Where clients reach the gRPC API: HOST:PORT, grpcs://HOST:PORT over TLS."""
        s = self.config.server
        return f"{'grpcs://' if s.tls else ''}{s.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        s = self.config.server
        return f"{'https' if s.tls else 'http'}://{s.host}:{self.http_port}"

    async def start(self) -> None:
        s = self.config.server
        await self.dispatcher.poll_loads()
        service = TandemService(self.dispatcher, self.preparer, self.metrics, self.actions)
        self._grpc, self.grpc_port, self._health = await start_grpc_server(
            service, s.host, s.grpc_port, self.config.api_key, s.tls
        )
        sock = bind_socket(s.host, s.http_port)
        self.http_port = sock.getsockname()[1]
        app = build_app(
            self.dispatcher,
            self.preparer,
            self.metrics,
            self.config.api_key,
            is_ready=lambda: self.dispatcher.serving and not self._stopping,
            missing_pools=self.dispatcher.registry.missing_roles,
        )
        # The dispatcher has ended every request before uvicorn is told to exit; its own
        # timeout only bounds connections that are slow to close.
        self._uvicorn = server = _EmbeddedUvicorn(
            uvicorn.Config(
                app,
                log_level="warning",
                lifespan="off",
                timeout_keep_alive=30,
                timeout_graceful_shutdown=2,
                ssl_certfile=s.tls.cert_file if s.tls else None,
                ssl_keyfile=s.tls.key_file if s.tls else None,
            )
        )
        self._tasks = [
            asyncio.create_task(server.serve(sockets=[sock])),
            asyncio.create_task(self._poll_loads()),
        ]
        while not server.started:
            if self._tasks[0].done():
                self._tasks[0].result()  # re-raises uvicorn's start-up error
            await asyncio.sleep(0.01)

    def add_task(self, coro: Coroutine) -> None:
        """Run `coro` on the frontend's loop until the frontend stops (call once started)."""
        self._tasks.append(asyncio.create_task(coro))

    async def stop(self, grace_s: float | None = None) -> None:
        """Health goes NOT_SERVING, new requests are refused, those in flight get `grace_s`
        (default: the config's `shutdown_grace_s`) to finish and are then ended with
        UNAVAILABLE; then both servers close."""
        self._stopping = True
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        await self.dispatcher.drain(
            self.config.server.shutdown_grace_s if grace_s is None else grace_s
        )
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._grpc is not None:
            await self._grpc.stop(1.0)
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _poll_loads(self) -> None:
        while True:
            try:
                self.metrics.observe_loads(await self.dispatcher.poll_loads())
                await self._report_health()
            except Exception:
                log.exception("polling worker loads failed")
            await asyncio.sleep(LOAD_POLL_S)

    async def _report_health(self) -> None:
        """gRPC health follows the pools: NOT_SERVING while one has no healthy worker."""
        serving = self.dispatcher.serving
        if serving == self._serving or self._stopping or self._health is None:
            return
        if self._serving is not None or not serving:
            log.warning(
                "cluster %s",
                "serving again"
                if serving
                else "NOT serving: no healthy "
                + " or ".join(self.dispatcher.registry.missing_roles())
                + " worker",
            )
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)
