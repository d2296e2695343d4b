"""A whole cluster served from a background thread: for tests, benchmarks and notebooks."""

from __future__ import annotations

import asyncio
import threading

from runtime.cluster.config import ClusterConfig
from runtime.cluster.launch import Cluster
from runtime.frontend.server import Frontend


class BackgroundServer:
    """Starts Ray (unless initialised), the workers and the frontend; serves on its own
    event loop thread until `stop()`. Use as a context manager.

    `grpc_url` / `http_url` are set once `start()` returns; `workers` are the worker handles
    (their actors can be called directly, e.g. to read free KV blocks).
    """

    def __init__(self, config: ClusterConfig):
        self.config = config
        self.cluster = Cluster(config)
        self.frontend = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tandem-frontend", daemon=True
        )

    @property
    def workers(self):
        return self.cluster.workers

    @property
    def grpc_url(self) -> str:
        return self.frontend.grpc_url

    @property
    def http_url(self) -> str:
        return self.frontend.http_url

    def start(self) -> "BackgroundServer":
        workers = self.cluster.start()
        self._thread.start()
        try:
            self.frontend = Frontend(self.config.frontend_config(), workers)
            self.run(self.frontend.start())
        except BaseException:
            self.stop()
            raise
        return self

    def run(self, coro, timeout: float | None = None):
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

    def __exit__(self, *exc) -> None:
        self.stop()
