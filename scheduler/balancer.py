"""The pool balancer's policy: from each pool's recent SLO attainment and load, decide
whether to move a worker from one pool to the other or to scale a pool, with hysteresis
and a cool-down so it does not flap. Plain Python: the live cluster and the simulator both
feed it observations and carry out its actions."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from scheduler.config import BalancerConfig


@dataclass(frozen=True)
class PoolState:
    """One pool as the balancer sees it at a decision: its healthy workers (`replicas`), the
    bounds it may be scaled within, and its load: `pressure` is how much of its capacity is
    in use, 1 when saturated (prefill: the share of recent time its workers spent
    computing prompts; decode: `decode_pressure` of its workers)."""

    role: str
    replicas: int
    min_replicas: int
    max_replicas: int
    pressure: float


def decode_pressure(
    free_blocks: int, total_blocks: int, running: int, waiting: int, max_num_seqs: int
) -> float:
    """A decode worker's share of capacity in use: of its KV blocks, or of its batch slots
    counting the sequences waiting for one, whichever is higher (0 for what is unknown)."""
    blocks = 1 - free_blocks / total_blocks if total_blocks else 0.0
    slots = (running + waiting) / max_num_seqs if max_num_seqs else 0.0
    return max(blocks, slots)


@dataclass(frozen=True)
class Action:
    """What the balancer decided at `at_s`: `kind` "flip" (one `source` worker turns to
    `role`), "scale_up" or "scale_down" (of `role`); `reason` says why, for the log, the
    metrics and `tandem status`."""

    at_s: float
    kind: str
    role: str
    reason: str
    source: str = ""  # the pool a flipped worker leaves
    outcome: str = ""  # set by whoever carries it out


class Balancer:
    """Decides one action at most per `decide` call.

    `observe_request(at_s, ttft_s, tpot_s)` records a finished request (tpot None for a
    one-token answer), `observe_refusal(at_s)` one refused at admission (a prefill-side
    miss: there was no capacity for it). Attainment is the share of requests within the SLO
    over the last `window_s`; a pool's pressure is sampled at each `decide` and read over
    the same window, as the mean for need and as the peak for spare capacity (a pool grows
    on a sustained load, and gives a worker up only if it never needed it lately). A pool
    *needs* capacity when its attainment is below
    `low_attainment` (refusals included for prefill) or its pressure is above
    `high_pressure`; it has *spare* capacity when its attainment is at least
    `high_attainment` and, one worker fewer, its pressure would still be below
    `low_pressure` (the gaps between the thresholds are the hysteresis). Then: a pool in
    need takes a worker from a pool with spare capacity (a flip) if that leaves the other
    within its bounds, else grows if below its `max_replicas`; a pool with spare capacity
    and nothing in need shrinks if above its `min_replicas`. After any action, nothing for
    `cooldown_s`, and the window restarts (a flipped worker's effect must be measured, not
    the load before it).
    """

    def __init__(self, config: BalancerConfig, ttft_slo_s: float, tpot_slo_s: float):
        self.config = config
        self.ttft_slo_s = ttft_slo_s
        self.tpot_slo_s = tpot_slo_s
        self._done: deque[tuple[float, bool, bool | None]] = deque()  # (at, ttft ok, tpot ok)
        self._last_action_s: float | None = None
        self._pressures: dict[str, deque[tuple[float, float]]] = {}  # role -> (at, pressure)
        self.actions: deque[Action] = deque(maxlen=64)

    def observe_request(self, at_s: float, ttft_s: float, tpot_s: float | None) -> None:
        tpot_ok = None if tpot_s is None else tpot_s <= self.tpot_slo_s
        self._done.append((at_s, ttft_s <= self.ttft_slo_s, tpot_ok))

    def observe_refusal(self, at_s: float) -> None:
        self._done.append((at_s, False, None))

    def attainment(self, now_s: float) -> tuple[float | None, float | None, int]:
        """(TTFT attainment, TPOT attainment, requests) over the window; None: no data."""
        while self._done and self._done[0][0] < now_s - self.config.window_s:
            self._done.popleft()
        ttft = [ok for _, ok, _ in self._done]
        tpot = [ok for _, _, ok in self._done if ok is not None]
        return (
            sum(ttft) / len(ttft) if ttft else None,
            sum(tpot) / len(tpot) if tpot else None,
            len(ttft),
        )

    def _windowed(self, now_s: float, pool: PoolState) -> tuple[PoolState, PoolState]:
        """The pool with its pressure as the mean, and as the peak, of this and the
        window's earlier samples (one per `decide`)."""
        samples = self._pressures.setdefault(pool.role, deque())
        samples.append((now_s, pool.pressure))
        while samples[0][0] < now_s - self.config.window_s:
            samples.popleft()
        values = [p for _, p in samples]
        return (
            replace(pool, pressure=sum(values) / len(values)),
            replace(pool, pressure=max(values)),
        )

    def decide(self, now_s: float, prefill: PoolState, decode: PoolState) -> Action | None:
        c = self.config
        (prefill, p_peak), (decode, d_peak) = (
            self._windowed(now_s, prefill),
            self._windowed(now_s, decode),
        )
        if self._last_action_s is not None and now_s - self._last_action_s < c.cooldown_s:
            return None
        ttft_ok, tpot_ok, seen = self.attainment(now_s)
        if seen < c.min_requests:
            return None
        pools = {"prefill": (prefill, ttft_ok), "decode": (decode, tpot_ok)}
        peaks = {"prefill": p_peak, "decode": d_peak}
        need = {r: self._needs(p, ok) for r, (p, ok) in pools.items()}
        spare = {r: self._spare(peaks[r], ok) for r, (_, ok) in pools.items()}
        action = None
        for role, other in (("prefill", "decode"), ("decode", "prefill")):
            if not need[role] or need[other]:
                continue
            mine, theirs = pools[role][0], pools[other][0]
            why = f"{role} {need[role]}; {other} {spare[other] or 'busy'}"
            if spare[other] and theirs.replicas > max(theirs.min_replicas, 1):
                action = Action(now_s, "flip", role, why, source=other)
            elif mine.replicas < mine.max_replicas:
                action = Action(now_s, "scale_up", role, why)
            break
        if action is None and not any(need.values()):
            for role, (pool, _) in pools.items():
                if spare[role] and pool.replicas > max(pool.min_replicas, 1):
                    action = Action(now_s, "scale_down", role, f"{role} {spare[role]}")
                    break
        if action is not None:
            self._last_action_s = now_s
            self._done.clear()
            self._pressures.clear()
            self.actions.append(action)
        return action

    def _needs(self, pool: PoolState, attained: float | None) -> str:
        """Why the pool needs capacity ("" if it does not)."""
        c = self.config
        if attained is not None and attained < c.low_attainment:
            return f"meets its SLO for {attained:.0%} of requests (< {c.low_attainment:.0%})"
        if pool.pressure > c.high_pressure:
            return f"is at {pool.pressure:.0%} of its capacity (> {c.high_pressure:.0%})"
        return ""

    def _spare(self, pool: PoolState, attained: float | None) -> str:
        """Why the pool can give up a worker ("" if it cannot)."""
        c = self.config
        if pool.replicas < 2 or (attained is not None and attained < c.high_attainment):
            return ""
        fewer = pool.pressure * pool.replicas / (pool.replicas - 1)
        if fewer < c.low_pressure:
            return (
                f"has spare capacity (at {pool.pressure:.0%}; {fewer:.0%} with one worker "
                f"fewer, < {c.low_pressure:.0%})"
            )
        return ""
