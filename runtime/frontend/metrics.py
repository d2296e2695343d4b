"""Prometheus metrics of the frontend (vLLM `bench serve` definitions of TTFT and TPOT)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401  (re-exported for the HTTP app)
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from runtime.workers.load import WorkerLoad

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TPOT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class FrontendMetrics:
    """One registry per frontend (tests run several in one process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.ttft = Histogram(
            "tandem_time_to_first_token_seconds",
            "Request arrival to its first token sent",
            buckets=_LATENCY,
            registry=r,
        )
        self.tpot = Histogram(
            "tandem_time_per_output_token_seconds",
            "(latency - TTFT) / (output tokens - 1)",
            buckets=_TPOT,
            registry=r,
        )
        self.e2e = Histogram(
            "tandem_e2e_request_latency_seconds",
            "Request arrival to its last token",
            buckets=_LATENCY,
            registry=r,
        )
        self.kv_seconds = Histogram(
            "tandem_kv_transfer_seconds",
            "KV handoff call start to the decode side's ack",
            buckets=_LATENCY,
            registry=r,
        )
        self.kv_bytes = Counter(
            "tandem_kv_transfer_bytes", "Encoded KV bytes handed off", registry=r
        )
        self.requests = Counter(
            "tandem_requests", "Finished requests", ["finish_reason"], registry=r
        )
        self.errors = Counter("tandem_request_errors", "Requests that failed", ["code"], registry=r)
        self.refused = Counter(
            "tandem_requests_refused",
            "Requests refused at admission: ttft (predicted to miss the TTFT target), tpot "
            "(the decode pool predicted past the TPOT target), queue (the prefill queue is "
            "full), api_key (its in-flight limit)",
            ["reason"],
            registry=r,
        )
        self.balancer_actions = Counter(
            "tandem_balancer_actions",
            "Pool balancer actions (flip, scale_up, scale_down) by the pool they give to or "
            "shrink, and whether they were carried out",
            ["kind", "role", "outcome"],
            registry=r,
        )
        self.prefix_cache_queries = Counter(
            "tandem_prefix_cache_queries", "Prompt tokens looked up in a prefix cache", registry=r
        )
        self.prefix_cache_hits = Counter(
            "tandem_prefix_cache_hits", "Prompt tokens found in a prefix cache", registry=r
        )
        self.prompt_tokens = Counter("tandem_prompt_tokens", "Prompt tokens", registry=r)
        self.generation_tokens = Counter("tandem_generation_tokens", "Generated tokens", registry=r)
        self.in_flight = Gauge("tandem_requests_in_flight", "Requests being served", registry=r)
        self.pool_size = Gauge("tandem_pool_size", "Healthy workers per pool", ["role"], registry=r)
        labels = ["worker", "role"]
        self.queued_prompt_tokens = Gauge(
            "tandem_worker_queued_prompt_tokens",
            "Prompt tokens waiting to be computed",
            labels,
            registry=r,
        )
        self.running = Gauge(
            "tandem_worker_running_sequences", "Sequences decoding", labels, registry=r
        )
        self.waiting = Gauge(
            "tandem_worker_waiting_sequences", "Sequences queued", labels, registry=r
        )
        self.prefill_rate = Gauge(
            "tandem_worker_prefill_tokens_per_second",
            "Prompt tokens per second the worker computed lately (what admission predicts by)",
            labels,
            registry=r,
        )
        self.free_blocks = Gauge(
            "tandem_worker_free_kv_blocks", "Free KV cache blocks", labels, registry=r
        )

    def observe_finished(self, timings, usage, finish_reason: str) -> None:
        self.requests.labels(finish_reason or "unknown").inc()
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.prefix_cache_queries.inc(usage.prompt_tokens)
        self.prefix_cache_hits.inc(usage.cached_prompt_tokens)
        self.generation_tokens.inc(usage.completion_tokens)
        self.ttft.observe(timings.ttft_s)
        self.e2e.observe(timings.e2e_s)
        if usage.completion_tokens > 1:
            self.tpot.observe((timings.e2e_s - timings.ttft_s) / (usage.completion_tokens - 1))
        if timings.kv_transfer_bytes:
            self.kv_seconds.observe(timings.kv_transfer_s)
            self.kv_bytes.inc(timings.kv_transfer_bytes)

    def observe_refused(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def observe_loads(self, loads: list[WorkerLoad]) -> None:
        sizes: dict[str, int] = {}
        for w in loads:
            sizes[w.role] = sizes.get(w.role, 0) + int(w.healthy)
            self.queued_prompt_tokens.labels(w.name, w.role).set(w.num_queued_prompt_tokens)
            self.running.labels(w.name, w.role).set(w.num_running)
            self.waiting.labels(w.name, w.role).set(w.num_waiting)
            self.free_blocks.labels(w.name, w.role).set(w.num_free_blocks)
            self.prefill_rate.labels(w.name, w.role).set(w.prefill_tokens_per_s)
        for role, n in sizes.items():
            self.pool_size.labels(role).set(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
