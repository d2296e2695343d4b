"""A discrete-event simulator of a Tandem cluster on a fake clock, driving the real `Router`
(routing and admission) with simulated workers whose step times come from cost models.

What it models: each worker's engine loop (prefill steps of up to `max_num_batched_tokens`
prompt tokens across queued requests, FIFO; decode steps over up to `max_num_seqs` running
sequences; colocated steps doing both), the KV handoff's time, decode-side backpressure (a
handoff waits for free blocks), each prompt worker's prefix cache (an LRU of as many
block-aligned prompt prefixes as it has KV blocks: a prompt computes only what follows its
longest cached prefix), and the frontend's load polls every `report_interval_s` (the router
sees snapshots that old, plus its own charges, as in the live cluster). What it does not:
preemption (a decode sequence reserves the blocks for its whole output at import), the
cache's eviction of blocks held by running sequences, worker failures.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from scheduler.admission import Overloaded
from scheduler.balancer import Action, Balancer, PoolState, decode_pressure
from scheduler.config import SchedulerConfig
from scheduler.costs import TransferCost, WorkerSpec
from scheduler.load import RateMeter, StepTimeModel
from scheduler.router import (
    Router,
    cached_tokens,
    matched_blocks,
    prefix_hashes,
    remember_prefixes,
)


@dataclass
class SimRequest:
    """One request and, after the run, what became of it (times on the simulated clock)."""

    arrival_s: float
    prompt_token_ids: tuple[int, ...]
    output_len: int
    deadline_s: float | None = None  # seconds the client gives it
    refused: bool = False
    first_token_s: float | None = None
    finish_s: float | None = None
    prefill_worker: str = ""
    decode_worker: str = ""
    tokens: int = 0  # output tokens so far
    num_cached_tokens: int = 0  # prompt tokens its prefill worker had cached
    predicted_ttft_s: float | None = None  # what admission predicted for it

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        if self.finish_s is None or self.first_token_s is None or self.output_len < 2:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_len - 1)


@dataclass(frozen=True)
class SimLoad:
    """A simulated worker's load snapshot (a `LoadSnapshot`)."""

    name: str
    role: str
    num_queued_prompt_tokens: int
    num_running: int
    num_waiting: int
    num_free_blocks: int
    block_size: int
    prefill_tokens_per_s: float
    decode_step_s: float = 0.0
    decode_step_s_per_seq: float = 0.0
    healthy: bool = True


@dataclass
class _Worker:
    spec: WorkerSpec
    free_blocks: int
    prompts: deque = field(default_factory=deque)  # [request, prompt tokens left]
    waiting: deque = field(default_factory=deque)  # decode side: requests waiting to run
    running: list = field(default_factory=list)
    busy: bool = False
    meter: RateMeter = field(default_factory=RateMeter)
    steps: StepTimeModel = field(default_factory=StepTimeModel)  # decode-only steps
    busy_share: RateMeter = field(default_factory=RateMeter)  # busy s per wall s
    marked_s: float = 0.0  # when busy_share was last fed
    assigned: int = 0  # requests routed here that still need it
    draining: str = ""  # "" | "flip" | "remove": taking no new requests
    flip_to: str = ""
    prefixes: OrderedDict[int, None] = field(default_factory=OrderedDict)  # the prefix cache

    def cached_prompt_tokens(self, prompt: Sequence[int]) -> int:
        """Prompt tokens this worker's prefix cache holds (the last one is always computed:
        it yields the first output token)."""
        bs = self.spec.block_size
        n = matched_blocks(self.prefixes, prefix_hashes(prompt, bs))
        return cached_tokens(n, bs, len(prompt))

    def cache(self, prompt: Sequence[int]) -> None:
        hashes = prefix_hashes(prompt, self.spec.block_size)
        remember_prefixes(self.prefixes, hashes, self.spec.num_blocks)

    def blocks_for(self, req: SimRequest) -> int:
        return math.ceil((req.num_prompt_tokens + req.output_len) / self.spec.block_size)

    def load(self) -> SimLoad:
        return SimLoad(
            self.spec.name,
            self.spec.role,
            sum(left for _, left in self.prompts),
            len(self.running),
            len(self.waiting),
            self.free_blocks,
            self.spec.block_size,
            self.meter.rate,
            self.steps.base_s,
            self.steps.per_seq_s,
            healthy=not self.draining,
        )

    def mark(self, now_s: float, busy_s: float) -> None:
        self.busy_share.add(busy_s, now_s - self.marked_s)
        self.marked_s = now_s

    def pressure(self, now_s: float) -> float:
        """The share of its capacity in use (see `PoolState.pressure`)."""
        if self.spec.role == "prefill":
            if not self.busy:
                self.mark(now_s, 0.0)
            return self.busy_share.rate
        return decode_pressure(
            self.free_blocks,
            self.spec.num_blocks,
            len(self.running),
            len(self.waiting),
            self.spec.max_num_seqs,
        )


class Simulator:
    """Runs requests through simulated workers under a `SchedulerConfig`.

    `workers`: the cluster, all prefill + decode or all colocated. `transfer`: the KV
    handoff's cost (disaggregated only; None: instant). `run(requests)` returns them with
    their outcome filled in; `summarize` turns that into the benchmark's figures.

    With the config's balancer enabled, its actions are carried out as the live cluster
    does: a flipped or removed worker takes no new requests, finishes those it holds, and
    (flipped) comes back in its new role `startup_s` later; a scaled-up worker (a copy of
    the pool's first) joins `startup_s` after the decision. `bounds` gives each pool's
    (min, max) replicas (default: 1 and its starting size). Flips need workers whose specs
    carry both costs. `actions` lists what the balancer did. `first_token_delay_s`: time
    from a first token on its worker to the client (the frontend's per-request overheads
    and the token's trip back), which admission's prediction does not count but its
    learned margin does.
    """

    def __init__(
        self,
        workers: Sequence[WorkerSpec],
        config: SchedulerConfig | None = None,
        transfer: TransferCost | None = None,
        report_interval_s: float = 0.2,
        bounds: dict[str, tuple[int, int]] | None = None,
        startup_s: float = 10.0,
        first_token_delay_s: float = 0.0,
    ):
        self.router = Router(config)
        self.config = self.router.config
        self.workers = {w.name: _Worker(w, w.num_blocks) for w in workers}
        self.colocated = any(w.role == "colocated" for w in workers)
        self.transfer = transfer
        self.report_interval_s = report_interval_s
        self.startup_s = startup_s
        self.first_token_delay_s = first_token_delay_s
        self.now = 0.0
        self._events: list = []
        self._order = itertools.count()
        self._templates = {w.role: w for w in reversed(workers)}
        self._bounds = {r: (1, sum(w.role == r for w in workers)) for r in ("prefill", "decode")}
        self._bounds.update(bounds or {})
        self.balancer: Balancer | None = None
        if self.config.balancer.enabled:
            assert self.config.ttft_slo_s is not None and self.config.tpot_slo_s is not None
            self.balancer = Balancer(
                self.config.balancer, self.config.ttft_slo_s, self.config.tpot_slo_s
            )

    @property
    def actions(self) -> list[Action]:
        return list(self.balancer.actions) if self.balancer else []

    def run(self, requests: Sequence[SimRequest]) -> list[SimRequest]:
        for req in requests:
            self._at(req.arrival_s, self._arrive, req)
        self._report()
        if self.balancer is not None:
            self._at(self.config.balancer.interval_s, self._balance)
        while self._events:
            self.now, _, fn, args = heapq.heappop(self._events)
            fn(*args)
            if fn == self._report and not self._pending(requests):
                break
        return list(requests)

    # -- events ---------------------------------------------------------------------------
    def _at(self, t: float, fn: Callable, *args) -> None:
        heapq.heappush(self._events, (t, next(self._order), fn, args))

    def _pending(self, requests: Sequence[SimRequest]) -> bool:
        return any(not r.refused and r.finish_s is None for r in requests)

    def _report(self) -> None:
        for w in self.workers.values():
            self.router.report(w.load())
        self._at(self.now + self.report_interval_s, self._report)

    # -- the balancer ---------------------------------------------------------------------
    def _balance(self) -> None:
        assert self.balancer is not None
        states = {}
        for role in ("prefill", "decode"):
            live = [w for w in self.workers.values() if w.spec.role == role and not w.draining]
            pressure = [w.pressure(self.now) for w in live]
            lo, hi = self._bounds[role]
            states[role] = PoolState(
                role, len(live), lo, hi, sum(pressure) / len(pressure) if pressure else 1.0
            )
        action = self.balancer.decide(self.now, states["prefill"], states["decode"])
        if action is not None:
            self._carry_out(action)
        self._at(self.now + self.config.balancer.interval_s, self._balance)

    def _carry_out(self, action: Action) -> None:
        if action.kind == "scale_up":
            spec = self._templates[action.role]
            name = f"{action.role}-{next(self._order)}"
            new = _Worker(replace(spec, name=name), spec.num_blocks)
            self._at(self.now + self.startup_s, self._join, new)
            return
        pool = [
            w
            for w in self.workers.values()
            if w.spec.role == (action.source or action.role) and not w.draining
        ]
        w = min(pool, key=lambda w: (w.assigned, w.spec.name))
        w.draining = "flip" if action.kind == "flip" else "remove"
        w.flip_to = action.role
        self.router.report(w.load())
        self._check_drained(w)

    def _check_drained(self, w: _Worker) -> None:
        if not w.draining or w.assigned or w.running or w.waiting or w.prompts:
            return
        del self.workers[w.spec.name]
        self.router.remove(w.spec.name)
        if w.draining == "flip":
            spec = replace(w.spec, role=w.flip_to)
            self._at(self.now + self.startup_s, self._join, _Worker(spec, spec.num_blocks))

    def _join(self, w: _Worker) -> None:
        self.workers[w.spec.name] = w
        self.router.report(w.load())

    def _release(self, name: str) -> None:
        """A request no longer needs worker `name`."""
        w = self.workers.get(name)
        if w is not None:
            w.assigned -= 1
            self._check_drained(w)

    def _arrive(self, req: SimRequest) -> None:
        ids = req.prompt_token_ids
        try:
            role = "colocated" if self.colocated else "prefill"
            route = self.router.route_prompt(role, ids, admit=True, deadline_s=req.deadline_s)
            req.prefill_worker = req.decode_worker = route.worker
            req.predicted_ttft_s = route.predicted_ttft_s
            if not self.colocated:
                req.decode_worker = self.router.pick_decode(num_kv_tokens=len(ids))
        except Overloaded:
            req.refused = True
            if self.balancer is not None:
                self.balancer.observe_refusal(self.now)
            return
        worker = self.workers[req.prefill_worker]
        worker.assigned += 1
        if req.decode_worker != req.prefill_worker:
            self.workers[req.decode_worker].assigned += 1
        req.num_cached_tokens = worker.cached_prompt_tokens(ids)
        worker.prompts.append([req, req.num_prompt_tokens - req.num_cached_tokens])
        self._kick(worker)

    def _kick(self, w: _Worker) -> None:
        """Start the worker's next step if it is idle and has work."""
        if w.busy:
            return
        self._admit_waiting(w)
        chunk: list[tuple[SimRequest, int]] = []
        budget = w.spec.max_num_batched_tokens - len(w.running)
        for entry in w.prompts:
            if budget <= 0:
                break
            take = min(entry[1], budget)
            chunk.append((entry[0], take))
            budget -= take
        if not chunk and not w.running:
            return
        seconds = 0.0
        tokens = sum(n for _, n in chunk)
        if chunk:
            assert w.spec.prefill is not None
            seconds += w.spec.prefill.step_seconds(tokens)
        if w.running:
            assert w.spec.decode is not None
            seconds += w.spec.decode.step_seconds(len(w.running))
        w.busy = True
        w.mark(self.now, 0.0)  # the idle time before this step
        self._at(self.now + seconds, self._stepped, w, chunk, list(w.running), tokens, seconds)

    def _stepped(self, w: _Worker, chunk, batch: list, tokens: int, seconds: float) -> None:
        w.busy = False
        w.mark(self.now, seconds)
        if tokens:
            w.meter.add(tokens, seconds)
        elif batch:
            w.steps.add(len(batch), seconds)
        for req, n in chunk:
            entry = w.prompts[0] if w.prompts and w.prompts[0][0] is req else None
            if entry is None:
                entry = next(e for e in w.prompts if e[0] is req)
            entry[1] -= n
            if entry[1] == 0:
                w.prompts.remove(entry)
                self._prefilled(w, req)
        for req in batch:
            req.tokens += 1
            if req.tokens >= req.output_len:
                w.running.remove(req)
                w.free_blocks += w.blocks_for(req)
                self._finish(req)
        self._kick(w)

    def _finish(self, req: SimRequest) -> None:
        req.finish_s = self.now
        if self.balancer is not None and req.ttft_s is not None:
            self.balancer.observe_request(self.now, req.ttft_s, req.tpot_s)
        self._release(req.decode_worker)

    def _prefilled(self, w: _Worker, req: SimRequest) -> None:
        req.first_token_s = self.now + self.first_token_delay_s
        if req.predicted_ttft_s is not None:
            role = "colocated" if self.colocated else "prefill"
            self.router.observe_ttft(role, req.predicted_ttft_s, req.first_token_s - req.arrival_s)
        w.cache(req.prompt_token_ids)
        req.tokens = 1
        target = self.workers[req.decode_worker]
        if req.output_len <= 1:
            if target is not w:
                self._release(req.prefill_worker)
            self._finish(req)
            return
        if target is w:
            target.waiting.append(req)
            return
        delay = self.transfer.seconds(req.num_prompt_tokens) if self.transfer else 0.0
        self._at(self.now + delay, self._handed_off, target, req)

    def _handed_off(self, w: _Worker, req: SimRequest) -> None:
        self._release(req.prefill_worker)
        w.waiting.append(req)
        self._kick(w)

    def _admit_waiting(self, w: _Worker) -> None:
        """Waiting sequences join the batch while slots and blocks last (in order: one
        that does not fit holds the rest back, as the engine's FIFO does)."""
        while w.waiting and len(w.running) < w.spec.max_num_seqs:
            need = w.blocks_for(w.waiting[0])
            if need > w.free_blocks:
                break
            w.free_blocks -= need
            w.running.append(w.waiting.popleft())
