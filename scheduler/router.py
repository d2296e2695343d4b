"""Request routing: pick the least-loaded prefill and decode worker from their load reports.

Plain Python (no torch, nothing of `runtime`): the frontend feeds it load snapshots and asks
it for targets; the scheduler issue refines the policy behind the same interface.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from scheduler.load import LoadSnapshot


class NoWorkerError(RuntimeError):
    """No healthy worker of the asked role is registered."""


@dataclass
class _Entry:
    """A worker's last snapshot plus what was routed to it since."""

    load: LoadSnapshot
    prompt_tokens: int = 0
    seqs: int = 0
    kv_tokens: int = 0  # KV handed to a decode worker

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


class Router:
    """Least-loaded routing over the workers' latest load snapshots.

    Between two snapshots the router charges each pick to the chosen worker (its prompt
    tokens to a prefill worker, one sequence to a decode worker), so a burst of requests
    arriving within one report interval spreads out instead of piling onto one worker.
    A fresh `report` replaces the worker's snapshot and drops those charges. Thread-safe.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def report(self, load: LoadSnapshot) -> None:
        with self._lock:
            self._entries[load.name] = _Entry(load)

    def remove(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)

    def loads(self) -> list[LoadSnapshot]:
        """The last snapshot of every worker, by name (without the charges since)."""
        with self._lock:
            return [self._entries[n].load for n in sorted(self._entries)]

    def pick_prefill(self, num_prompt_tokens: int, exclude: frozenset[str] = frozenset()) -> str:
        """The prefill worker with the fewest prompt tokens queued."""
        return self._pick("prefill", exclude, _prefill_key, num_prompt_tokens, 0)

    def pick_decode(self, exclude: frozenset[str] = frozenset(), num_kv_tokens: int = 0) -> str:
        """The decode worker with the fewest sequences, then the most free blocks, among
        those whose free blocks hold `num_kv_tokens` of KV if any does (else among all: a
        handoff waits for blocks there)."""
        return self._pick("decode", exclude, _decode_key, 0, 1, num_kv_tokens)

    def pick_colocated(self, num_prompt_tokens: int, exclude: frozenset[str] = frozenset()) -> str:
        """The colocated worker with the least work ahead: queued prompt tokens, then
        sequences."""
        return self._pick("colocated", exclude, _colocated_key, num_prompt_tokens, 1)

    def _pick(
        self,
        role: str,
        exclude: frozenset[str],
        key,
        prompt_tokens: int,
        seqs: int,
        kv_tokens: int = 0,
    ) -> str:
        with self._lock:
            candidates = [
                e
                for e in self._entries.values()
                if e.load.role == role and e.load.healthy and e.load.name not in exclude
            ]
            if not candidates:
                raise NoWorkerError(
                    f"no healthy {role} worker" + (f" outside {sorted(exclude)}" if exclude else "")
                )
            if kv_tokens:
                candidates = [e for e in candidates if e.can_hold(kv_tokens)] or candidates
            best = min(candidates, key=key)
            best.prompt_tokens += prompt_tokens
            best.seqs += seqs
            best.kv_tokens += kv_tokens
            return best.load.name


def _prefill_key(e: _Entry):
    return (e.queued_prompt_tokens, e.load.num_waiting, e.load.name)


def _decode_key(e: _Entry):
    return (e.seqs_ahead, -e.load.num_free_blocks, e.load.name)


def _colocated_key(e: _Entry):
    return (e.queued_prompt_tokens, e.seqs_ahead, -e.load.num_free_blocks, e.load.name)
