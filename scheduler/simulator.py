"""A discrete-event simulator of a Tandem cluster on a fake clock, driving the real `Router`
(routing and admission) with simulated workers whose step times come from cost models.

What it models: each worker's engine loop (prefill steps of up to `max_num_batched_tokens`
prompt tokens across queued requests, FIFO; decode steps over up to `max_num_seqs` running
sequences; colocated steps doing both), the KV handoff's time, decode-side backpressure (a
handoff waits for free blocks), and the frontend's load polls every `report_interval_s`
(the router sees snapshots that old, plus its own charges, as in the live cluster). What it
does not: preemption (a decode sequence reserves the blocks for its whole output at
import), prefix caching, worker failures.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import statistics
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from scheduler.admission import Overloaded
from scheduler.config import SchedulerConfig
from scheduler.costs import TransferCost, WorkerSpec
from scheduler.load import RateMeter
from scheduler.router import Router


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
        )


class Simulator:
    """Runs requests through simulated workers under a `SchedulerConfig`.

    `workers`: the cluster, all prefill + decode or all colocated. `transfer`: the KV
    handoff's cost (disaggregated only; None: instant). `run(requests)` returns them with
    their outcome filled in; `summarize` turns that into the benchmark's figures.
    """

    def __init__(
        self,
        workers: Sequence[WorkerSpec],
        config: SchedulerConfig | None = None,
        transfer: TransferCost | None = None,
        report_interval_s: float = 0.2,
    ):
        self.router = Router(config)
        self.workers = {w.name: _Worker(w, w.num_blocks) for w in workers}
        self.colocated = any(w.role == "colocated" for w in workers)
        self.transfer = transfer
        self.report_interval_s = report_interval_s
        self.now = 0.0
        self._events: list = []
        self._order = itertools.count()

    def run(self, requests: Sequence[SimRequest]) -> list[SimRequest]:
        for req in requests:
            self._at(req.arrival_s, self._arrive, req)
        self._report()
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

    def _arrive(self, req: SimRequest) -> None:
        ids = req.prompt_token_ids
        try:
            if self.colocated:
                name = self.router.pick_colocated(ids, admit=True, deadline_s=req.deadline_s)
                req.prefill_worker = req.decode_worker = name
            else:
                req.prefill_worker = self.router.pick_prefill(
                    ids, admit=True, deadline_s=req.deadline_s
                )
                req.decode_worker = self.router.pick_decode(num_kv_tokens=len(ids))
        except Overloaded:
            req.refused = True
            return
        worker = self.workers[req.prefill_worker]
        worker.prompts.append([req, req.num_prompt_tokens])
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
        self._at(self.now + seconds, self._stepped, w, chunk, list(w.running), tokens, seconds)

    def _stepped(self, w: _Worker, chunk, batch: list, tokens: int, seconds: float) -> None:
        w.busy = False
        if tokens:
            w.meter.add(tokens, seconds)
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
                req.finish_s = self.now
                w.running.remove(req)
                w.free_blocks += w.blocks_for(req)
        self._kick(w)

    def _prefilled(self, w: _Worker, req: SimRequest) -> None:
        req.first_token_s = self.now
        req.tokens = 1
        if req.output_len <= 1:
            req.finish_s = self.now
            return
        target = self.workers[req.decode_worker]
        if target is w:
            target.waiting.append(req)
            return
        delay = self.transfer.seconds(req.num_prompt_tokens) if self.transfer else 0.0
        self._at(self.now + delay, self._handed_off, target, req)

    def _handed_off(self, w: _Worker, req: SimRequest) -> None:
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


def gamma_arrivals(
    rate: float, n: int, burstiness: float = 1.0, seed: int = 0, start_s: float = 0.0
) -> list[float]:
    """`n` arrival times at `rate` per second, gaps drawn from a gamma distribution of shape
    `burstiness` (1: Poisson; below 1: burstier), as vLLM's `bench serve` draws them."""
    rng = random.Random(seed)
    t, out = start_s, []
    for _ in range(n):
        t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
        out.append(t)
    return out


@dataclass(frozen=True)
class SimSummary:
    """The run's figures, with vLLM `bench serve`'s definitions (goodput: completed requests
    within both SLOs per second of the run)."""

    completed: int
    refused: int
    duration_s: float
    request_throughput: float
    goodput: float
    median_ttft_s: float
    p99_ttft_s: float
    median_tpot_s: float
    p99_tpot_s: float


def summarize(requests: Sequence[SimRequest], ttft_slo_s: float, tpot_slo_s: float) -> SimSummary:
    done = [r for r in requests if r.finish_s is not None]
    start = min(r.arrival_s for r in requests)
    end = max((r.finish_s for r in done if r.finish_s is not None), default=start)
    duration = max(end - start, 1e-9)
    ttfts = sorted(r.ttft_s for r in done if r.ttft_s is not None)
    tpots = sorted(r.tpot_s for r in done if r.tpot_s is not None)
    good = sum(
        (r.ttft_s or 0.0) <= ttft_slo_s and (r.tpot_s is None or r.tpot_s <= tpot_slo_s)
        for r in done
    )
    return SimSummary(
        completed=len(done),
        refused=sum(r.refused for r in requests),
        duration_s=duration,
        request_throughput=len(done) / duration,
        goodput=good / duration,
        median_ttft_s=statistics.median(ttfts) if ttfts else 0.0,
        p99_ttft_s=_percentile(ttfts, 99),
        median_tpot_s=statistics.median(tpots) if tpots else 0.0,
        p99_tpot_s=_percentile(tpots, 99),
    )


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    rank = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)
