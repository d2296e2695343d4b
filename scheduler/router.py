"""Request routing and admission over the workers' load reports.

Plain Python (no torch, nothing of `runtime`): the frontend feeds it load snapshots and asks
it for targets; tests and the simulator drive the same class.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from scheduler.admission import Overloaded, TTFTMargin, check_admission, predicted_wait_s
from scheduler.config import SchedulerConfig
from scheduler.load import LoadSnapshot, predicted_step_s

# Prompt prefixes remembered per worker for prefix affinity (each a hash of one block-aligned
# prefix): enough for thousands of distinct prompts, a few hundred KiB per worker.
PREFIXES_PER_WORKER = 1 << 14
# The prefix granularity when a worker has not reported its block size yet.
DEFAULT_BLOCK_SIZE = 16


class NoWorkerError(RuntimeError):
    """No healthy worker of the asked role is registered."""


@dataclass
class _Entry:
    """A worker's last snapshot plus what was routed to it since."""

    load: LoadSnapshot
    prompt_tokens: int = 0
    seqs: int = 0
    kv_tokens: int = 0  # KV handed to a decode worker
    prefixes: OrderedDict[int, None] = field(default_factory=OrderedDict)

    def can_hold(self, num_kv_tokens: int) -> bool:
        """Whether the free blocks, less what was routed here since, hold that much KV (and
        its first output token)."""
        bs = self.load.block_size
        if not bs:
            return True
        free = self.load.num_free_blocks - -(-self.kv_tokens // bs)
        return -(-(num_kv_tokens + 1) // bs) <= free

    @property
    def queued_prompt_tokens(self) -> int:
        return self.load.num_queued_prompt_tokens + self.prompt_tokens

    @property
    def seqs_ahead(self) -> int:
        return self.load.num_running + self.load.num_waiting + self.seqs

    def wait_s(self, num_prompt_tokens: int) -> float:
        return predicted_wait_s(
            self.queued_prompt_tokens, num_prompt_tokens, self.load.prefill_tokens_per_s
        )

    def matched_blocks(self, hashes: list[int]) -> int:
        """How many leading blocks of a prompt with these prefix hashes were sent here."""
        return matched_blocks(self.prefixes, hashes)

    def remember(self, hashes: list[int]) -> None:
        remember_prefixes(self.prefixes, hashes, PREFIXES_PER_WORKER)


@dataclass(frozen=True)
class PromptRoute:
    """Where a prompt goes, and the TTFT predicted for it there: its prompt tokens and those
    queued ahead over the worker's measured rate, before any learned margin (None while the
    pool has no measured rate)."""

    worker: str
    predicted_ttft_s: float | None


class Router:
    """Picks workers from their latest load snapshots under a `SchedulerConfig`, and admits
    or refuses new requests (`scheduler.admission`).

    Between two snapshots the router charges each pick to the chosen worker (its prompt
    tokens to a prefill worker, one sequence and the KV to a decode worker), so a burst of
    requests arriving within one report interval spreads out instead of piling onto one
    worker, and admission sees the queue the burst builds. A fresh `report` replaces the
    worker's snapshot and drops those charges. Thread-safe.
    """

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()
        self._entries: dict[str, _Entry] = {}
        self._turns = {role: itertools.count() for role in ("prefill", "decode", "colocated")}
        self._lock = threading.Lock()
        self.num_refused = 0
        q = self.config.ttft_margin_quantile
        self._margins = {role: TTFTMargin(q) for role in ("prefill", "colocated") if q is not None}

    def report(self, load: LoadSnapshot) -> None:
        with self._lock:
            old = self._entries.get(load.name)
            prefixes = old.prefixes if old is not None and load.healthy else OrderedDict()
            self._entries[load.name] = _Entry(load, prefixes=prefixes)

    def remove(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)

    def loads(self) -> list[LoadSnapshot]:
        """The last snapshot of every worker, by name (without the charges since)."""
        with self._lock:
            return [self._entries[n].load for n in sorted(self._entries)]

    def route_prompt(
        self,
        role: str,
        prompt_token_ids: Sequence[int],
        exclude: frozenset[str] = frozenset(),
        admit: bool = False,
        deadline_s: float | None = None,
    ) -> PromptRoute:
        """The `role` ("prefill" or "colocated") worker for this prompt under the routing
        policy (colocated ties go to the fewest sequences). With `admit` (a new request,
        not a retry) it is first checked against the TTFT target (the config's SLO, or
        `deadline_s` left of the request's own deadline if sooner), with the learned margin,
        and the queue bound: `Overloaded` refuses it, charging nothing. Report the first
        token's observed TTFT with `observe_ttft` so the margin keeps up."""
        return self._pick_prompt(role, prompt_token_ids, exclude, admit, deadline_s)

    def pick_prefill(
        self,
        prompt_token_ids: Sequence[int],
        exclude: frozenset[str] = frozenset(),
        admit: bool = False,
        deadline_s: float | None = None,
    ) -> str:
        """`route_prompt`'s prefill worker."""
        return self._pick_prompt("prefill", prompt_token_ids, exclude, admit, deadline_s).worker

    def pick_colocated(
        self,
        prompt_token_ids: Sequence[int],
        exclude: frozenset[str] = frozenset(),
        admit: bool = False,
        deadline_s: float | None = None,
    ) -> str:
        """`route_prompt`'s colocated worker."""
        return self._pick_prompt("colocated", prompt_token_ids, exclude, admit, deadline_s).worker

    def observe_ttft(self, role: str, predicted_s: float, observed_s: float) -> None:
        """An admitted request's first token came `observed_s` after it arrived, where its
        route predicted `predicted_s`: admission's margin learns from the difference."""
        with self._lock:
            margin = self._margins.get(role)
            if margin is not None:
                margin.observe(predicted_s, observed_s)

    def num_ttft_observations(self, role: str) -> int:
        """How many first tokens the `role` margin holds (at most its window)."""
        with self._lock:
            margin = self._margins.get(role)
            return len(margin) if margin is not None else 0

    def ttft_margin_s(self, role: str) -> float:
        """What admission adds to a `role` worker's predicted TTFT now (see `TTFTMargin`)."""
        with self._lock:
            margin = self._margins.get(role)
            return margin.margin_s if margin is not None else 0.0

    def pick_decode(self, exclude: frozenset[str] = frozenset(), num_kv_tokens: int = 0) -> str:
        """A decode worker among those whose free blocks hold `num_kv_tokens` of KV if any
        does (else among all: a handoff waits for blocks there): in turn under
        `round_robin`, else the one with the fewest sequences, then the most free blocks."""
        with self._lock:
            candidates = self._candidates("decode", exclude)
            if num_kv_tokens:
                candidates = [e for e in candidates if e.can_hold(num_kv_tokens)] or candidates
            if self.config.routing == "round_robin":
                best = self._in_turn("decode", candidates)
            else:
                best = min(
                    candidates, key=lambda e: (e.seqs_ahead, -e.load.num_free_blocks, e.load.name)
                )
            best.seqs += 1
            best.kv_tokens += num_kv_tokens
            return best.load.name

    def _pick_prompt(
        self,
        role: str,
        prompt: Sequence[int],
        exclude: frozenset[str],
        admit: bool,
        deadline_s: float | None,
    ) -> PromptRoute:
        n = len(prompt)
        with self._lock:
            candidates = self._candidates(role, exclude)
            hashes: list[int] = []
            cached = 0
            if self.config.routing == "round_robin":
                best = self._in_turn(role, candidates)
            elif self.config.routing == "prefix_affinity":
                hashes = prefix_hashes(prompt, candidates[0].load.block_size or DEFAULT_BLOCK_SIZE)
                best, cached = self._by_affinity(candidates, hashes, n)
            else:
                best = min(candidates, key=lambda e: (e.wait_s(n), *_prompt_key(e)))
            uncached = n - cached
            # A worker that has not measured its rate yet (just started) is taken to run at
            # the slowest rate its pool has measured.
            rate = best.load.prefill_tokens_per_s or min(
                (r for e in candidates if (r := e.load.prefill_tokens_per_s)), default=0.0
            )
            if admit:
                budget = self.config.ttft_slo_s
                if deadline_s is not None:
                    budget = deadline_s if budget is None else min(budget, deadline_s)
                margin = self._margins.get(role)
                try:
                    check_admission(
                        best.queued_prompt_tokens,
                        uncached,
                        rate,
                        budget,
                        self.config.max_queued_prompt_tokens,
                        margin.margin_s if margin is not None else 0.0,
                    )
                    if role == "prefill":
                        self._check_decode_side()
                except Overloaded:
                    self.num_refused += 1
                    raise
            predicted = (
                predicted_wait_s(best.queued_prompt_tokens, uncached, rate) if rate > 0 else None
            )
            best.prompt_tokens += uncached
            best.seqs += 1
            if hashes:
                best.remember(hashes)
            return PromptRoute(best.load.name, predicted)

    def _check_decode_side(self) -> None:
        """Raise `Overloaded` if no decode worker is predicted to step within the TPOT
        target once it holds, beside what it runs, its share of the sequences now in the
        prefill pool and this one. A worker that has not measured its steps is taken to
        step as the slowest of its pool that has; without any measurement, admit."""
        target = self.config.tpot_slo_s
        decoders = [e for e in self._entries.values() if e.load.role == "decode" and e.load.healthy]
        if target is None or not decoders:
            return
        incoming = sum(
            e.seqs_ahead
            for e in self._entries.values()
            if e.load.role == "prefill" and e.load.healthy
        )
        share = incoming / len(decoders)
        measured = [e.load for e in decoders if _has_step_times(e.load)]
        if not measured:
            return
        slowest = max(measured, key=lambda load: predicted_step_s(load, 1))

        def step_s(e: _Entry) -> float:
            load = e.load if _has_step_times(e.load) else slowest
            return predicted_step_s(load, e.seqs_ahead + share + 1)

        fastest = min(step_s(e) for e in decoders)
        if fastest > target:
            raise Overloaded(
                "tpot",
                f"the server is at capacity: a token every {fastest * 1000:.0f} ms is "
                f"predicted, past the {target * 1000:.0f} ms target; retry later",
                1,
            )

    def _by_affinity(
        self, candidates: list[_Entry], hashes: list[int], n: int
    ) -> tuple[_Entry, int]:
        """The worker holding the longest prefix of the prompt among those whose queue is
        within the imbalance bound of the shortest; ties (and no match) go least-loaded.
        Returns it and how many prompt tokens it likely has cached."""
        shortest = min(e.queued_prompt_tokens for e in candidates)
        bound = shortest + self.config.affinity_max_imbalance_tokens
        near = [e for e in candidates if e.queued_prompt_tokens <= bound]
        best = min(near, key=lambda e: (-e.matched_blocks(hashes), e.wait_s(n), *_prompt_key(e)))
        bs = best.load.block_size or DEFAULT_BLOCK_SIZE
        return best, cached_tokens(best.matched_blocks(hashes), bs, n)

    def _in_turn(self, role: str, candidates: list[_Entry]) -> _Entry:
        ordered = sorted(candidates, key=lambda e: e.load.name)
        return ordered[next(self._turns[role]) % len(ordered)]

    def _candidates(self, role: str, exclude: frozenset[str]) -> list[_Entry]:
        candidates = [
            e
            for e in self._entries.values()
            if e.load.role == role and e.load.healthy and e.load.name not in exclude
        ]
        if not candidates:
            raise NoWorkerError(
                f"no healthy {role} worker" + (f" outside {sorted(exclude)}" if exclude else "")
            )
        return candidates


def _has_step_times(load: LoadSnapshot) -> bool:
    return bool(load.decode_step_s or load.decode_step_s_per_seq)


def _prompt_key(e: _Entry) -> tuple:
    return (e.queued_prompt_tokens, e.seqs_ahead, -e.load.num_free_blocks, e.load.name)


def matched_blocks(prefixes: OrderedDict[int, None], hashes: list[int]) -> int:
    """How many of a prompt's leading prefix `hashes` are in `prefixes`."""
    n = 0
    for h in hashes:
        if h not in prefixes:
            break
        n += 1
    return n


def cached_tokens(num_matched_blocks: int, block_size: int, num_prompt_tokens: int) -> int:
    """Prompt tokens a cache holding that many leading blocks spares: all of them but the
    last prompt token, which is always computed (it yields the first output token)."""
    return max(min(num_matched_blocks * block_size, num_prompt_tokens - 1), 0)


def remember_prefixes(prefixes: OrderedDict[int, None], hashes: list[int], capacity: int) -> None:
    """Put `hashes` in the LRU `prefixes` as the most recent, keeping at most `capacity`."""
    for h in hashes:
        prefixes[h] = None
        prefixes.move_to_end(h)
    while len(prefixes) > capacity:
        prefixes.popitem(last=False)


def prefix_hashes(prompt: Sequence[int], block_size: int) -> list[int]:
    """One chained hash per whole block of the prompt: equal hashes, equal prefixes."""
    hashes, h = [], 0
    for start in range(0, len(prompt) - block_size + 1, block_size):
        h = hash((h, tuple(prompt[start : start + block_size])))
        hashes.append(h)
    return hashes
