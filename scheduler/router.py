"""Request routing: pick the least-loaded prefill and decode worker from their load reports.

Plain Python (no torch, nothing of `runtime`): the frontend feeds it load snapshots and asks
it for targets; the scheduler issue refines the policy behind the same interface.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class WorkerLoad:
    """One worker's load snapshot, as it reports it after its engine steps.

    `num_queued_prompt_tokens`: prompt tokens admitted but not yet computed (prefill work
    ahead of a new request). `num_running`: sequences holding KV blocks and decoding.
    `incarnation` names the worker process that reported it: it changes when the worker is
    restarted, so whoever routes to it knows to look up its new addresses.
    """

    name: str
    role: str                          # "prefill" | "decode" | "colocated"
    num_queued_prompt_tokens: int = 0
    num_running: int = 0
    num_waiting: int = 0
    num_free_blocks: int = 0
    num_total_blocks: int = 0
    healthy: bool = True
    incarnation: str = ""


class NoWorkerError(RuntimeError):
    """No healthy worker of the asked role is registered."""


class Router:
    """Least-loaded routing over the workers' latest load snapshots.

    Between two snapshots the router charges each pick to the chosen worker (its prompt
    tokens to a prefill worker, one sequence to a decode worker), so a burst of requests
    arriving within one report interval spreads out instead of piling onto one worker.
    A fresh `report` replaces the worker's snapshot and drops those charges. Thread-safe.
    """

    def __init__(self) -> None:
        self._loads: dict[str, WorkerLoad] = {}
        self._lock = threading.Lock()

    def report(self, load: WorkerLoad) -> None:
        with self._lock:
            self._loads[load.name] = load

    def remove(self, name: str) -> None:
        with self._lock:
            self._loads.pop(name, None)

    def loads(self) -> list[WorkerLoad]:
        with self._lock:
            return sorted(self._loads.values(), key=lambda w: w.name)

    def pick_prefill(self, num_prompt_tokens: int, exclude: frozenset[str] = frozenset()) -> str:
        """The prefill (or colocated) worker with the fewest prompt tokens queued."""
        return self._pick(("prefill",), exclude, _prefill_key,
                          lambda w: replace(w, num_queued_prompt_tokens=
                                            w.num_queued_prompt_tokens + num_prompt_tokens))

    def pick_decode(self, exclude: frozenset[str] = frozenset()) -> str:
        """The decode worker with the fewest running sequences, then the most free blocks."""
        return self._pick(("decode",), exclude, _decode_key,
                          lambda w: replace(w, num_running=w.num_running + 1))

    def pick_colocated(self, num_prompt_tokens: int,
                       exclude: frozenset[str] = frozenset()) -> str:
        """The colocated worker with the least work ahead: queued prompt tokens, then running."""
        return self._pick(("colocated",), exclude, _colocated_key,
                          lambda w: replace(w, num_queued_prompt_tokens=
                                            w.num_queued_prompt_tokens + num_prompt_tokens,
                                            num_running=w.num_running + 1))

    def _pick(self, roles, exclude, key, charge) -> str:
        with self._lock:
            candidates = [w for w in self._loads.values()
                          if w.role in roles and w.healthy and w.name not in exclude]
            if not candidates:
                raise NoWorkerError(f"no healthy {'/'.join(roles)} worker"
                                    + (f" outside {sorted(exclude)}" if exclude else ""))
            best = min(candidates, key=key)
            self._loads[best.name] = charge(best)
            return best.name


def _prefill_key(w: WorkerLoad):
    return (w.num_queued_prompt_tokens, w.num_waiting, w.name)


def _decode_key(w: WorkerLoad):
    return (w.num_running + w.num_waiting, -w.num_free_blocks, w.name)


def _colocated_key(w: WorkerLoad):
    return (w.num_queued_prompt_tokens, w.num_running + w.num_waiting, -w.num_free_blocks,
            w.name)
