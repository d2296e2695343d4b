"""The cluster's workers as the frontend sees them: handles, health and loads."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from runtime.workers.handle import WorkerHandle
from runtime.workers.load import WorkerLoad
from scheduler.router import Router

log = logging.getLogger(__name__)
# How long one poll waits for a worker's load report.
LOAD_TIMEOUT_S = 2.0
# A worker whose polls time out this long in a row is taken as down. Only that long: a
# worker busy on two shared cores can take seconds to answer and is still serving. A dead or
# restarting one fails its poll at once (Ray: ActorDiedError / ActorUnavailableError).
SILENT_DOWN_S = 10.0


class WorkerRegistry:
    """Handles of the cluster's workers, their health and their load snapshots.

    `poll()` asks every worker for its load and hands it to the router. A worker whose poll
    fails (dead, restarting) is reported unhealthy, so nothing is routed to it, and so is
    one silent for `SILENT_DOWN_S`; a slow answer alone keeps its last report. One that
    answers from a new process (Ray restarted it) has its handle re-read, since a restarted
    decode worker's KV receiver listens on a new port. `mark_down` takes a worker out of
    routing at once when a request saw it die, until a poll finds it answering again.

    The pool balancer changes the set: `add` a started worker, `drain` one (it is reported
    unhealthy to the router, so it gets no new request, while it finishes what it holds),
    `remove` it once drained.
    """

    def __init__(self, workers: list[WorkerHandle], router: Router | None = None):
        self.handles = {w.name: w for w in workers}
        self.router = router or Router()
        self._heard = {w.name: time.monotonic() for w in workers}  # last answer per worker
        self.mode = "colocated" if any(w.role == "colocated" for w in workers) else "disaggregated"
        self._needed = ("colocated",) if self.mode == "colocated" else ("prefill", "decode")
        self._loads: dict[str, WorkerLoad] = {}  # the last report of each worker, by name
        self.draining: set[str] = set()
        for w in workers:
            self._report(WorkerLoad(w.name, w.role, incarnation=w.incarnation))

    def __getitem__(self, name: str) -> WorkerHandle:
        return self.handles[name]

    @property
    def serving(self) -> bool:
        """Every pool the request path needs has a healthy worker."""
        healthy = {w.role for w in self._loads.values() if w.healthy}
        return all(role in healthy for role in self._needed)

    def missing_roles(self) -> list[str]:
        healthy = {w.role for w in self._loads.values() if w.healthy}
        return [role for role in self._needed if role not in healthy]

    def add(self, handle: WorkerHandle) -> None:
        self.handles[handle.name] = handle
        self._heard[handle.name] = time.monotonic()
        self._report(WorkerLoad(handle.name, handle.role, incarnation=handle.incarnation))

    def drain(self, name: str) -> None:
        self.draining.add(name)
        self._report(self._loads[name])

    def undrain(self, name: str) -> None:
        self.draining.discard(name)
        self._report(self._loads[name])

    def remove(self, name: str) -> None:
        self.handles.pop(name, None)
        self._heard.pop(name, None)
        self._loads.pop(name, None)
        self.draining.discard(name)
        self.router.remove(name)

    def load(self, name: str) -> WorkerLoad:
        """The worker's last report (as the worker sent it, draining or not)."""
        return self._loads[name]

    def mark_down(self, name: str) -> None:
        handle = self.handles[name]
        self._report(WorkerLoad(name, handle.role, healthy=False, incarnation=handle.incarnation))

    async def poll(self) -> list[WorkerLoad]:
        """Every worker's load snapshot (unhealthy ones for those that did not answer; a
        draining worker's as it sent it)."""
        names = list(self.handles)
        results = await asyncio.gather(*(self._poll_one(n) for n in names))
        for load in results:
            if load is not None:
                self._report(load)
        return [self._loads[n] for n in sorted(self._loads)]

    def _report(self, load: WorkerLoad) -> None:
        if load.name not in self.handles:  # removed while its poll was in flight
            return
        self._loads[load.name] = load
        self.router.report(replace(load, healthy=False) if load.name in self.draining else load)

    async def _poll_one(self, name: str) -> WorkerLoad | None:
        """The worker's report; an unhealthy one if it failed or has been silent too long;
        None (keep the last) if it is only slow."""
        handle = self.handles[name]
        try:
            load = await asyncio.wait_for(_ref(handle.actor.load.remote()), LOAD_TIMEOUT_S)
            if load.incarnation != handle.incarnation:
                fresh = await asyncio.wait_for(handle.refreshed(), LOAD_TIMEOUT_S)
                log.warning(
                    "worker %s is back in a new process (%s, was %s)%s",
                    name,
                    fresh.incarnation,
                    handle.incarnation,
                    f"; KV receiver at {fresh.kv_address}" if fresh.kv_address else "",
                )
                if name in self.handles:  # not removed meanwhile
                    self.handles[name] = fresh
                handle = fresh
                if load.incarnation != fresh.incarnation:  # restarted again meanwhile
                    raise RuntimeError("the worker restarted while being looked up")
            self._heard[name] = time.monotonic()
            return load
        except asyncio.TimeoutError:
            silent = time.monotonic() - self._heard.get(name, time.monotonic())
            if silent < SILENT_DOWN_S:
                return None
            log.warning("worker %s has not reported its load for %.0f s", name, silent)
        except Exception as e:
            log.warning("worker %s did not report its load: %r", name, e)
        return WorkerLoad(name, handle.role, healthy=False, incarnation=handle.incarnation)


async def _ref(ref):
    return await ref
