"""The one place where workers become Ray actors, placed by their pool's resources."""

from __future__ import annotations

from typing import Any

import ray

from runtime.cluster.config import ClusterConfig, PoolConfig
from runtime.workers import WORKER_CLASSES
from runtime.workers.config import WorkerConfig
from runtime.workers.handle import WorkerHandle


def worker_config(cluster: ClusterConfig, role: str, name: str) -> WorkerConfig:
    return WorkerConfig(
        name=name,
        engine=cluster.engine_config(role),
        kv=cluster.kv if role != "colocated" else None,
        kv_bind_host=cluster.kv_bind_host,
        kv_advertise_host=cluster.kv_advertise_host,
        faults=cluster.faults,
        observability=cluster.observability,
    )


def actor_options(pool: PoolConfig) -> dict[str, Any]:
    """Ray actor options of one worker of `pool`: placement, concurrency and restarts. Actors
    stay unnamed so two clusters can share one Ray cluster. Ray restarts a dead worker
    (`pool.max_restarts` times); its calls are never retried by Ray, since the frontend
    resumes the requests in flight itself."""
    options: dict[str, Any] = {
        "num_cpus": pool.num_cpus,
        "num_gpus": pool.num_gpus,
        "max_concurrency": pool.max_concurrency,
        "max_restarts": pool.max_restarts,
        "max_task_retries": 0,
    }
    if pool.accelerator_type:
        options["accelerator_type"] = pool.accelerator_type
    if pool.resources:
        options["resources"] = dict(pool.resources)
    return options


def start_workers(cluster: ClusterConfig, timeout_s: float = 600.0) -> list[WorkerHandle]:
    """Start every pool's actors (Ray must be initialised) and wait until each has loaded its
    model; raises the first worker's start-up error (and kills the others)."""
    # (name, role, actor): a ray.actor.ActorHandle's methods exist only at run time
    # (`.remote()`), so the actor is held as Any, as in WorkerHandle.
    actors = [
        _spawn(cluster, pool.role, f"{pool.role}-{i}")
        for pool in cluster.pools
        for i in range(pool.replicas)
    ]
    return _started(actors, timeout_s)


def start_worker(
    cluster: ClusterConfig, role: str, name: str, timeout_s: float = 600.0
) -> WorkerHandle:
    """Start one more worker of `role`'s pool, named `name` (the pool balancer's scale-up or
    flip); blocks until its model is loaded."""
    return _started([_spawn(cluster, role, name)], timeout_s)[0]


def _spawn(cluster: ClusterConfig, role: str, name: str) -> tuple[str, str, Any]:
    config = worker_config(cluster, role, name)
    cls = ray.remote(WORKER_CLASSES[role])
    return name, role, cls.options(**actor_options(cluster.pool(role))).remote(config)


def _started(actors: list[tuple[str, str, Any]], timeout_s: float) -> list[WorkerHandle]:
    try:
        infos = ray.get([a.info.remote() for _, _, a in actors], timeout=timeout_s)
    except BaseException:
        stop_workers([WorkerHandle(n, r, a) for n, r, a in actors])
        raise
    return [WorkerHandle.from_info(a, info) for (_, _, a), info in zip(actors, infos)]


def stop_workers(workers: list[WorkerHandle], timeout_s: float = 10.0) -> None:
    """Close each worker (stops its KV receiver and engine thread), then kill its actor."""
    refs = [w.actor.close.remote() for w in workers]
    try:
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    except Exception:
        pass
    for w in workers:
        try:
            ray.kill(w.actor)
        except Exception:
            pass
