"""Prometheus metrics of a cluster, scraped from its frontend's /metrics.

vLLM's scheme under Tandem's own prefix (`tandem:time_to_first_token_seconds`, ...), every
series labelled with `model_name`; a worker's own series also with `pool` and `worker`.
`METRICS` (runtime/frontend/metric_specs.py) is the one list of what is exported.

Request metrics are the frontend's (it sees every request from arrival to its last token,
so the counts match what clients got). Worker metrics come from the load reports the
frontend polls (at every scrape too): gauges are the latest report, counters the growth of
the totals each worker process reports, so a worker restart never runs a counter back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import prometheus_client
from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401  (re-exported for the HTTP app)
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from runtime.frontend.metric_specs import METRICS, NAMES, WORKER_LABELS, MetricSpec
from runtime.workers.load import WorkerLoad

__all__ = ["CONTENT_TYPE_LATEST", "METRICS", "NAMES", "FrontendMetrics", "MetricSpec"]

# vLLM leaves the `_created` series out too: they double every counter and histogram.
prometheus_client.disable_created_metrics()

_KINDS = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}


class _ForModel:
    """A labelled metric with `model_name` filled in: `.labels(*the other labels)`."""

    def __init__(self, metric, model_name: str):
        self._metric = metric
        self._model_name = model_name

    def labels(self, *values: str):
        return self._metric.labels(self._model_name, *values)


class FrontendMetrics:
    """One registry per frontend (tests run several in one process), serving `model_name`.

    `errors`, `refused` and `balancer_actions` take `.labels(code)`, `.labels(reason)` and
    `.labels(kind, pool, outcome)`; the `observe_*` methods do the rest."""

    def __init__(self, model_name: str = ""):
        self.registry = CollectorRegistry()
        self.model_name = model_name
        self._metrics = {}
        for m in METRICS:
            extra = {"buckets": m.buckets} if m.buckets else {}
            labels = ("model_name", *m.labels)
            self._metrics[m.name] = _KINDS[m.kind](
                m.name, m.help, labels, registry=self.registry, **extra
            )
        self.errors = self._for_model("tandem:request_errors_total")
        self.refused = self._for_model("tandem:admission_refusals_total")
        self.balancer_actions = self._for_model("tandem:balancer_actions_total")
        for m in METRICS:  # series without other labels show from the start, at 0
            if not m.labels and m.kind != "gauge":
                self._of(m.name)
        # Per worker: (incarnation, the totals last seen), to count their growth.
        self._totals: dict[str, tuple[str, dict[tuple[str, str], int]]] = {}
        self._worker_gauges: set[tuple[str, str]] = set()  # (pool, worker) labels in use

    def _for_model(self, name: str) -> _ForModel:
        return _ForModel(self._metrics[name], self.model_name)

    def _of(self, name: str, *labels: str):
        return self._metrics[name].labels(self.model_name, *labels)

    def track_in_flight(self, count: Callable[[], int]) -> None:
        """Read the in-flight gauge from `count` at every scrape."""
        self._of("tandem:num_requests_in_flight").set_function(count)

    def observe_finished(self, timings, usage, finish_reason: str) -> None:
        """A request finished (`Timings`, `Usage` of runtime.frontend.results)."""
        self._of("tandem:request_success_total", finish_reason or "unknown").inc()
        self._of("tandem:prompt_tokens_total").inc(usage.prompt_tokens)
        self._of("tandem:generation_tokens_total").inc(usage.completion_tokens)
        self._of("tandem:time_to_first_token_seconds").observe(timings.ttft_s)
        self._of("tandem:e2e_request_latency_seconds").observe(timings.e2e_s)
        self._of("tandem:request_queue_time_seconds").observe(timings.queue_s)
        self._of("tandem:request_prefill_time_seconds").observe(timings.prefill_s)
        if usage.completion_tokens > 1:
            tpot = (timings.e2e_s - timings.ttft_s) / (usage.completion_tokens - 1)
            self._of("tandem:time_per_output_token_seconds").observe(tpot)
            self._of("tandem:request_decode_time_seconds").observe(timings.decode_s)
        if timings.kv_transfer_bytes:
            self._of("tandem:kv_transfer_time_seconds").observe(timings.kv_transfer_s)
            self._of("tandem:kv_transfer_bytes_total").inc(timings.kv_transfer_bytes)

    def observe_inter_token(self, gaps_s: Iterable[float]) -> None:
        """Inter-token latencies of tokens just streamed."""
        itl = self._of("tandem:inter_token_latency_seconds")
        for gap in gaps_s:
            itl.observe(gap)

    def observe_refused(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def observe_loads(self, loads: list[WorkerLoad]) -> None:
        """The workers' latest load reports: set the gauges, count the totals' growth."""
        sizes: dict[str, int] = {}
        current = {(w.role, w.name) for w in loads}
        for gone in self._worker_gauges - current:  # a worker stopped or changed pools
            for m in METRICS:
                if m.kind == "gauge" and m.labels == WORKER_LABELS:
                    self._metrics[m.name].remove(self.model_name, *gone)
        self._worker_gauges = current
        for w in loads:
            sizes[w.role] = sizes.get(w.role, 0) + int(w.healthy)
            labels = (w.role, w.name)
            self._of("tandem:num_requests_running", *labels).set(w.num_running)
            self._of("tandem:num_requests_waiting", *labels).set(w.num_waiting)
            self._of("tandem:num_free_kv_blocks", *labels).set(w.num_free_blocks)
            self._of("tandem:num_queued_prompt_tokens", *labels).set(w.num_queued_prompt_tokens)
            self._of("tandem:prefill_tokens_per_second", *labels).set(w.prefill_tokens_per_s)
            used = 1 - w.num_free_blocks / w.num_total_blocks if w.num_total_blocks else 0.0
            self._of("tandem:kv_cache_usage_perc", *labels).set(used)
            self._count_totals(w)
        for role, n in sizes.items():
            self._of("tandem:pool_size", role).set(n)

    def _count_totals(self, w: WorkerLoad) -> None:
        """Add what `w`'s totals grew by since its last report. A new incarnation (the
        worker restarted) counts from 0; a report below the last (one the frontend made up
        for a silent worker) adds nothing."""
        totals: dict[tuple[str, str], int] = {  # (metric, failure code or "") -> total
            ("tandem:prefix_cache_queries_total", ""): w.num_prefix_cache_queries,
            ("tandem:prefix_cache_hits_total", ""): w.num_prefix_cache_hits,
            ("tandem:num_preemptions_total", ""): w.num_preemptions,
        }
        for code, n in w.handoff_failures:
            totals[("tandem:kv_handoff_failures_total", code)] = n
        incarnation, last = self._totals.get(w.name, ("", {}))
        if incarnation != w.incarnation:
            last = {}
        for (name, code), n in totals.items():
            counter = self._of(name, w.role, w.name, *([code] if code else []))
            seen = last.get((name, code), 0)
            if n > seen:  # the series shows at 0 until it counts
                counter.inc(n - seen)
                last[(name, code)] = n
        self._totals[w.name] = (w.incarnation, last)

    def render(self) -> bytes:
        return generate_latest(self.registry)
