"""The control plane's settings (the cluster file's `scheduler` section)."""

from __future__ import annotations

from dataclasses import dataclass, field

ROUTING_POLICIES = ("least_loaded", "round_robin", "prefix_affinity")


@dataclass(frozen=True)
class BalancerConfig:
    """The pool balancer (see `scheduler.balancer.Balancer` for the policy).

    Off unless `enabled`; it then needs the scheduler's `ttft_slo_s` and `tpot_slo_s`. Every
    `interval_s` it looks at the last `window_s` of requests (at least `min_requests` of
    them) and the pools' pressure (the share of their capacity in use); after acting it
    waits `cooldown_s`. A pool needs a worker below `low_attainment` or above
    `high_pressure`; it can spare one at `high_attainment` or more if, one worker fewer,
    its pressure would stay below `low_pressure`.
    """

    enabled: bool = False
    interval_s: float = 5.0
    window_s: float = 30.0
    cooldown_s: float = 60.0
    min_requests: int = 20
    low_attainment: float = 0.9
    high_attainment: float = 0.98
    high_pressure: float = 0.9
    low_pressure: float = 0.6

    def __post_init__(self) -> None:
        for name in ("interval_s", "window_s", "low_pressure", "high_pressure"):
            if getattr(self, name) <= 0:
                raise ValueError(f"scheduler.balancer.{name} must be > 0")
        if not 0 < self.low_attainment <= self.high_attainment <= 1:
            raise ValueError(
                "scheduler.balancer needs 0 < low_attainment <= high_attainment <= 1, got "
                f"{self.low_attainment} and {self.high_attainment}"
            )
        if self.low_pressure >= self.high_pressure:
            raise ValueError("scheduler.balancer.low_pressure must be below high_pressure")


@dataclass(frozen=True)
class SchedulerConfig:
    """How requests are admitted and routed.

    - `routing`: how a prompt's worker is picked. `least_loaded`: the shortest predicted
      wait (queued prompt tokens over the worker's measured prefill rate). `round_robin`: in
      turn. `prefix_affinity`: the worker that was last sent the longest shared prompt prefix
      (its prefix cache likely holds it), unless that worker's queue is more than
      `affinity_max_imbalance_tokens` longer than the shortest. Decode workers are always
      picked least-loaded among those whose free blocks hold the request's KV.
    - `ttft_slo_s`: the time-to-first-token target. A new request whose predicted TTFT (the
      prompt tokens queued ahead of it plus its own, over the prefill worker's measured rate)
      exceeds it, or exceeds what is left of the request's own deadline, is refused at once
      (RESOURCE_EXHAUSTED / HTTP 429 with Retry-After). None: only deadlines refuse.
    - `tpot_slo_s`: the time-per-output-token target. A new request is refused at once when
      every decode worker's step time, predicted from its measured steps for its batch plus
      its share of the sequences in the prefill pool and this one, exceeds it. The balancer
      also holds the decode pool to it. None: the decode side admits anything.
    - `ttft_margin_quantile`: admission adds to each predicted TTFT this quantile of how
      much later than predicted the last 100 admitted requests' first tokens came (0 until
      10 are in, never negative; not on a worker with nothing queued). The default, 0.98, is
      the second latest of them: admitted requests should meet their target, and a lower
      quantile lets about that share of those admitted near it miss (0.9 let 9 of 80 miss
      on the local cluster), while the very latest is often a one-off that would refuse
      too much for the next 100 requests. None: no margin.
    - `max_queued_prompt_tokens`: the bound on each prefill (or colocated) worker's queue; a
      request that would take the queue past it is refused. 0: no bound. A worker with an
      empty queue always takes a request, however long its prompt.
    - `balancer`: moves workers between the pools, or scales them, by SLO attainment.
    """

    routing: str = "least_loaded"
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    ttft_margin_quantile: float | None = 0.98
    max_queued_prompt_tokens: int = 65536
    affinity_max_imbalance_tokens: int = 4096
    balancer: BalancerConfig = field(default_factory=BalancerConfig)

    def __post_init__(self) -> None:
        if self.routing not in ROUTING_POLICIES:
            raise ValueError(
                f"scheduler.routing must be one of {', '.join(ROUTING_POLICIES)}, "
                f"got {self.routing!r}"
            )
        for name in ("ttft_slo_s", "tpot_slo_s"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"scheduler.{name} must be > 0, got {getattr(self, name)}")
        q = self.ttft_margin_quantile
        if q is not None and not 0 <= q <= 1:
            raise ValueError(f"scheduler.ttft_margin_quantile must be in [0, 1], got {q}")
        if self.balancer.enabled and (self.ttft_slo_s is None or self.tpot_slo_s is None):
            raise ValueError("scheduler.balancer needs scheduler.ttft_slo_s and tpot_slo_s")
        for name in ("max_queued_prompt_tokens", "affinity_max_imbalance_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"scheduler.{name} must be >= 0, got {getattr(self, name)}")
