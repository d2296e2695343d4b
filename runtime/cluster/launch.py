"""Starting and stopping a whole cluster: Ray, the worker pools, the frontend."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
from collections.abc import Awaitable, Callable

import ray

from runtime.cluster.actors import start_workers, stop_workers
from runtime.cluster.balancing import start_balancer
from runtime.cluster.config import ClusterConfig
from runtime.frontend.server import Frontend
from runtime.observability import configure_tracing, shutdown_tracing
from runtime.workers.handle import WorkerHandle

log = logging.getLogger(__name__)


def init_ray(config: ClusterConfig) -> bool:
    """Join `config.ray.address`, or start an embedded local Ray sized for the pools.
    Returns True when this call started Ray (and so should shut it down)."""
    if ray.is_initialized():
        return False
    r = config.ray
    log_to_driver = os.environ.get("TANDEM_WORKER_LOGS", "1") == "1"
    if r.address:
        ray.init(
            address=r.address,
            namespace=r.namespace,
            include_dashboard=False,
            log_to_driver=log_to_driver,
        )
    else:
        ray.init(
            num_cpus=r.num_cpus or embedded_num_cpus(config),
            namespace=r.namespace,
            include_dashboard=False,
            log_to_driver=log_to_driver,
        )
    return True


def embedded_num_cpus(config: ClusterConfig) -> int:
    """Logical CPUs of an embedded Ray: what the pools ask for, rounded up to a whole number
    (Ray refuses a node with a fractional CPU count), and at least 1."""
    wanted = sum(p.num_cpus * p.replicas for p in config.pools)
    # round() first: 0.7 * 10 must ask for 7 CPUs, not 8.
    return max(math.ceil(round(wanted, 6)), 1)


class Cluster:
    """A running cluster: `start()` brings up Ray (if needed) and the workers."""

    def __init__(self, config: ClusterConfig):
        self.config = config
        self.workers: list[WorkerHandle] = []
        self._owns_ray = False

    def connect(self) -> None:
        """Initialise Ray (call from the main thread: Ray installs signal handlers there)."""
        self._owns_ray = init_ray(self.config) or self._owns_ray

    def start(self) -> list[WorkerHandle]:
        """Ray and the workers; this process (the frontend's) exports its spans as the
        config's `observability` says."""
        configure_tracing(self.config.observability, "frontend")
        self.connect()
        try:
            self.workers = start_workers(self.config)
        except BaseException:
            self.stop()
            raise
        return self.workers

    def stop(self) -> None:
        if self.workers:
            stop_workers(self.workers)
            self.workers = []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
        shutdown_tracing()


async def serve_until_signalled(
    config: ClusterConfig, on_ready: Callable[[Frontend], Awaitable[None]] | None = None
) -> None:
    """Start the cluster and its frontend; serve until SIGINT/SIGTERM, then stop cleanly.
    `on_ready(frontend)` (a coroutine function) runs once both ports are up."""
    cluster = Cluster(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    frontend: Frontend | None = None
    try:
        # Start-up cannot be interrupted half way (actors are being placed); a signal during
        # it stops the cluster right after.
        cluster.connect()
        # ray.init installs Abseil's failure signal handler over SIGTERM (it then dies in a
        # segfault instead of stopping): take the signals back once Ray is up.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        workers = await loop.run_in_executor(None, cluster.start)
        if not stop.is_set():
            frontend = Frontend(config.frontend_config(), workers)
            await frontend.start()
            await start_balancer(config, frontend, workers)
            if on_ready is not None:
                await on_ready(frontend)
            await stop.wait()
    finally:
        # A second signal cuts the grace period short; it never skips the clean-up.
        hurry = frontend.dispatcher.hurry if frontend is not None else (lambda: None)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, hurry)
        try:
            if frontend is not None:
                log.info(
                    "stopping: %d requests in flight get up to %.0f s to finish",
                    frontend.dispatcher.num_in_flight,
                    config.server.shutdown_grace_s,
                )
                await frontend.stop()
            await loop.run_in_executor(None, cluster.stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
