"""The pool balancer on a serving cluster: `scheduler.balancer`'s decisions, carried out
through Ray on the frontend's workers."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from runtime.cluster.actors import start_worker, stop_workers
from runtime.cluster.config import ClusterConfig
from runtime.frontend.results import Timings, Usage
from runtime.frontend.server import Frontend
from runtime.workers.handle import WorkerHandle
from runtime.workers.load import WorkerLoad
from scheduler.balancer import Action, Balancer, PoolState, decode_pressure

log = logging.getLogger(__name__)
# How long a worker being flipped or removed may take to finish what it holds; past it the
# action is abandoned and the worker serves on (nothing it holds is cut off).
DRAIN_TIMEOUT_S = 300.0
# How long a new worker may take to start (place, load its model) before the action fails.
START_TIMEOUT_S = 300.0


class LiveBalancer:
    """Every `scheduler.balancer.interval_s`, reads the pools from the frontend's registry
    and asks the policy for an action; carries it out one at a time:

    - scale_up: start one more worker of the pool (Ray places it by the pool's resources)
      and add it to routing once its model is loaded;
    - scale_down: drain the pool's least-loaded worker (no new requests; those it holds
      finish, and for a prefill worker so do their KV handoffs), then stop it;
    - flip: drain it the same way, stop it, and start a worker of the other pool in its
      place (the other pool's engine settings and actor options).

    Each action is logged with its reason and outcome, counted in
    `tandem:balancer_actions_total`, and kept for `ClusterStatus` (`tandem status`).
    `workers` (the cluster's list, which it stops at the end) is kept in step with the
    workers started and stopped here. `start` / `stop` are injectable for tests.
    """

    def __init__(
        self,
        config: ClusterConfig,
        frontend: Frontend,
        workers: list[WorkerHandle],
        start: Callable[[ClusterConfig, str, str], WorkerHandle] = start_worker,
        stop: Callable[[list[WorkerHandle]], None] = stop_workers,
    ):
        s = config.scheduler
        assert s.ttft_slo_s is not None and s.tpot_slo_s is not None  # SchedulerConfig checks
        self.config = config
        self.frontend = frontend
        self.policy = Balancer(s.balancer, s.ttft_slo_s, s.tpot_slo_s)
        self._start, self._stop = start, stop
        self.workers = workers
        self._busy: dict[str, tuple[float, float]] = {}  # name -> (when, busy_s) last seen
        self._numbers = itertools.count(max(p.replicas for p in config.pools))
        frontend.on_finished.append(self._finished)
        frontend.on_refused.append(lambda reason: self.policy.observe_refusal(time.monotonic()))

    @property
    def registry(self):
        return self.frontend.dispatcher.registry

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.config.scheduler.balancer.interval_s)
            try:
                await self.step()
            except Exception:
                log.exception("the pool balancer failed a step")

    async def step(self) -> Action | None:
        """Decide once and carry out what was decided; returns the action (with its
        outcome), or None."""
        pools = {role: self._pool(role) for role in ("prefill", "decode")}
        action = self.policy.decide(time.monotonic(), pools["prefill"], pools["decode"])
        if action is None:
            return None
        log.info("pool balancer: %s %s (%s)", action.kind, action.role, action.reason)
        try:
            outcome = await self._carry_out(action)
        except Exception as e:
            log.exception("pool balancer: %s %s failed", action.kind, action.role)
            outcome = f"failed: {e}"
        done = replace(action, outcome=outcome)
        self.frontend.actions.append(done)
        failed = outcome.startswith(("failed", "abandoned"))
        self.frontend.metrics.balancer_actions.labels(
            action.kind, action.role, "failed" if failed else "done"
        ).inc()
        log.info("pool balancer: %s %s: %s", action.kind, action.role, outcome)
        return done

    # -- what the policy sees -------------------------------------------------------------
    def _finished(self, timings: Timings, usage: Usage, finish_reason: str) -> None:
        n = usage.completion_tokens
        tpot = (timings.e2e_s - timings.ttft_s) / (n - 1) if n > 1 else None
        self.policy.observe_request(time.monotonic(), timings.ttft_s, tpot)

    def _pool(self, role: str) -> PoolState:
        r = self.registry
        live = [
            r.load(n)
            for n, h in r.handles.items()
            if h.role == role and n not in r.draining and r.load(n).healthy
        ]
        pressures = [self._pressure(w) for w in live]
        lo, hi = self.config.pool(role).bounds
        return PoolState(
            role, len(live), lo, hi, sum(pressures) / len(pressures) if pressures else 1.0
        )

    def _pressure(self, w: WorkerLoad) -> float:
        if w.role == "prefill":  # the share of wall time spent in engine steps since last
            now = time.monotonic()
            then, busy = self._busy.get(w.name, (now, w.busy_s))
            self._busy[w.name] = (now, w.busy_s)
            return min((w.busy_s - busy) / (now - then), 1.0) if now > then else 0.0
        return decode_pressure(
            w.num_free_blocks, w.num_total_blocks, w.num_running, w.num_waiting, w.max_num_seqs
        )

    # -- carrying it out ------------------------------------------------------------------
    async def _carry_out(self, action: Action) -> str:
        loop = asyncio.get_running_loop()
        if action.kind == "scale_up":
            handle = await self._started(action.role)
            return f"started {handle.name}"
        r = self.registry
        source = action.source or action.role
        candidates = [h for n, h in r.handles.items() if h.role == source and n not in r.draining]
        worker = min(candidates, key=lambda h: _work(r.load(h.name)))
        r.drain(worker.name)
        if not await self._drained(worker.name):
            r.undrain(worker.name)
            return f"abandoned: {worker.name} still held requests after {DRAIN_TIMEOUT_S:.0f} s"
        r.remove(worker.name)
        self._busy.pop(worker.name, None)
        self.workers[:] = [w for w in self.workers if w.name != worker.name]
        await loop.run_in_executor(None, self._stop, [worker])
        if action.kind == "scale_down":
            return f"stopped {worker.name}"
        handle = await self._started(action.role)
        return f"{worker.name} -> {handle.name}"

    async def _started(self, role: str) -> WorkerHandle:
        name = f"{role}-{next(self._numbers)}"
        loop = asyncio.get_running_loop()
        handle = await asyncio.wait_for(
            loop.run_in_executor(None, self._start, self.config, role, name), START_TIMEOUT_S
        )
        self.workers.append(handle)
        self.registry.add(handle)
        return handle

    async def _drained(self, name: str) -> bool:
        """Wait until nothing in flight involves the worker and it holds no KV."""
        end = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < end:
            load = self.registry.load(name)
            if not self.frontend.dispatcher.holds(name) and not _work(load):
                # The load may predate the last request's end: ask the worker itself.
                fresh = await self.registry.handles[name].actor.load.remote()
                if not _work(fresh):
                    return True
            await asyncio.sleep(0.2)
        return False


def _work(w: WorkerLoad) -> int:
    """What the worker still holds: sequences, queued prompt tokens, used KV blocks."""
    used = w.num_total_blocks - w.num_free_blocks if w.num_total_blocks else 0
    return w.num_running + w.num_waiting + w.num_queued_prompt_tokens + used


async def start_balancer(
    config: ClusterConfig, frontend: Frontend, workers: list[WorkerHandle]
) -> LiveBalancer | None:
    """Run the pool balancer beside a started frontend (until it stops) when the config
    enables it and the cluster is disaggregated; returns it, or None."""
    if not config.scheduler.balancer.enabled or config.mode != "disaggregated":
        return None
    balancer = LiveBalancer(config, frontend, workers)
    frontend.add_task(balancer.run())
    return balancer
