"""The control plane's settings (the cluster file's `scheduler` section)."""

from __future__ import annotations

from dataclasses import dataclass

ROUTING_POLICIES = ("least_loaded", "round_robin", "prefix_affinity")


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
    - `max_queued_prompt_tokens`: the bound on each prefill (or colocated) worker's queue; a
      request that would take the queue past it is refused. 0: no bound. A worker with an
      empty queue always takes a request, however long its prompt.
    """

    routing: str = "least_loaded"
    ttft_slo_s: float | None = None
    max_queued_prompt_tokens: int = 65536
    affinity_max_imbalance_tokens: int = 4096

    def __post_init__(self) -> None:
        if self.routing not in ROUTING_POLICIES:
            raise ValueError(
                f"scheduler.routing must be one of {', '.join(ROUTING_POLICIES)}, "
                f"got {self.routing!r}"
            )
        if self.ttft_slo_s is not None and self.ttft_slo_s <= 0:
            raise ValueError(f"scheduler.ttft_slo_s must be > 0, got {self.ttft_slo_s}")
        for name in ("max_queued_prompt_tokens", "affinity_max_imbalance_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"scheduler.{name} must be >= 0, got {getattr(self, name)}")
