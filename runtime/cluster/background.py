"""A whole cluster served from a background thread: for tests, benchmarks and notebooks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from runtime.cluster.balancing import LiveBalancer, start_balancer
from runtime.cluster.config import ClusterConfig
from runtime.cluster.launch import Cluster
from runtime.frontend.server import Frontend
from runtime.workers.handle import WorkerHandle

T = TypeVar("T")


class BackgroundServer:
    """Starts Ray (unless initialised), the workers and the frontend; serves on its own
    event loop thread until `stop()`. Use as a context manager.

    `grpc_url` / `http_url` are set once `start()` returns; `workers` are the worker handles
    (their actors can be called directly, e.g. to read free KV blocks).
    """

    def __init__(self, config: ClusterConfig):
        self.config = config
        self.cluster = Cluster(config)
        self.frontend: Frontend | None = None
        self.balancer: LiveBalancer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tandem-frontend", daemon=True
        )

    @property
    def workers(self) -> list[WorkerHandle]:
        return self.cluster.workers

    def _started_frontend(self) -> Frontend:
        if self.frontend is None:
            raise RuntimeError("BackgroundServer is not serving: call start() first")
        return self.frontend

    @property
    def grpc_url(self) -> str:
        return self._started_frontend().grpc_url

    @property
    def http_url(self) -> str:
        return self._started_frontend().http_url

    def start(self) -> "BackgroundServer":
        workers = self.cluster.start()
        self._thread.start()
        try:
            frontend = Frontend(self.config.frontend_config(), workers)
            self.frontend = frontend  # set first: stop() stops a half-started frontend
            self.run(frontend.start())
            self.balancer = self.run(start_balancer(self.config, frontend, workers))
        except BaseException:
            self.stop()
            raise
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        if self.frontend is not None and self._thread.is_alive():
            self.run(self.frontend.stop(), timeout=30)
            self.frontend = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self.cluster.stop()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
