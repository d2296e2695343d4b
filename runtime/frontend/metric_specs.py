"""The one list of the metrics a Tandem cluster exports (vLLM's scheme under `tandem:`).

The frontend builds its registry from `METRICS` (runtime/frontend/metrics.py); the tests and
the Grafana dashboard's test check names against it. Every metric is also labelled with
`model_name`; a worker's own with `pool` and `worker` besides.
"""

from __future__ import annotations

from dataclasses import dataclass

_LATENCY = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_PER_TOKEN = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
WORKER_LABELS = ("pool", "worker")


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric: its full name (a counter's ends in `_total`), its kind
    ("counter", "gauge", "histogram"), help text, labels besides `model_name`, and a
    histogram's buckets."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def series(self) -> tuple[str, ...]:
        """The sample names it exposes (what a PromQL expression may name)."""
        if self.kind == "histogram":
            return tuple(f"{self.name}_{s}" for s in ("bucket", "sum", "count"))
        return (self.name,)


def _h(name: str, help: str, buckets: tuple[float, ...] = _LATENCY) -> MetricSpec:
    return MetricSpec(name, "histogram", help, (), buckets)


METRICS: tuple[MetricSpec, ...] = (
    # Per request, the frontend's (vLLM `bench serve` definitions).
    _h("tandem:time_to_first_token_seconds", "Request arrival to its first token sent"),
    _h(
        "tandem:time_per_output_token_seconds",
        "Per request: (latency - TTFT) / (output tokens - 1), requests of 2+ tokens",
        _PER_TOKEN,
    ),
    _h(
        "tandem:inter_token_latency_seconds",
        "Every gap between a request's consecutive tokens (timed on the engine that sampled "
        "both; across a KV handoff or a resume, between their arrivals at the frontend)",
        _PER_TOKEN,
    ),
    _h("tandem:e2e_request_latency_seconds", "Request arrival to its last token"),
    _h(
        "tandem:request_queue_time_seconds",
        "On the worker computing the prompt: arrival to first scheduled",
    ),
    _h(
        "tandem:request_prefill_time_seconds",
        "On the worker computing the prompt: first scheduled to first token",
    ),
    _h(
        "tandem:request_decode_time_seconds",
        "On the decoding worker: its start to the last token, requests of 2+ tokens",
    ),
    _h(
        "tandem:kv_transfer_time_seconds",
        "Per handed-off request: KV handoff call start to the decode side's ack",
    ),
    MetricSpec("tandem:kv_transfer_bytes_total", "counter", "Encoded KV bytes handed off"),
    MetricSpec("tandem:prompt_tokens_total", "counter", "Prompt tokens of finished requests"),
    MetricSpec(
        "tandem:generation_tokens_total", "counter", "Generated tokens of finished requests"
    ),
    MetricSpec(
        "tandem:request_success_total",
        "counter",
        "Finished requests by why they finished (stop, length, ...)",
        ("finished_reason",),
    ),
    MetricSpec(
        "tandem:request_errors_total",
        "counter",
        "Requests that ended with an error, by gRPC status name",
        ("code",),
    ),
    MetricSpec(
        "tandem:admission_refusals_total",
        "counter",
        "Requests refused at admission: ttft (predicted to miss the TTFT target), tpot (the "
        "decode pool predicted past the TPOT target), queue (the prefill queue is full), "
        "api_key (its in-flight limit)",
        ("reason",),
    ),
    MetricSpec(
        "tandem:balancer_actions_total",
        "counter",
        "Pool balancer actions (flip, scale_up, scale_down) by the pool they give to or "
        "shrink, and whether they were carried out (done, failed)",
        ("kind", "pool", "outcome"),
    ),
    MetricSpec("tandem:num_requests_in_flight", "gauge", "Requests the frontend is serving"),
    MetricSpec("tandem:pool_size", "gauge", "Healthy workers per pool", ("pool",)),
    # Per worker, from its load reports.
    MetricSpec(
        "tandem:num_requests_running",
        "gauge",
        "Sequences holding KV blocks and running",
        WORKER_LABELS,
    ),
    MetricSpec(
        "tandem:num_requests_waiting",
        "gauge",
        "Sequences waiting for a batch slot or blocks",
        WORKER_LABELS,
    ),
    MetricSpec(
        "tandem:kv_cache_usage_perc", "gauge", "KV cache blocks in use (1 = full)", WORKER_LABELS
    ),
    MetricSpec("tandem:num_free_kv_blocks", "gauge", "Free KV cache blocks", WORKER_LABELS),
    MetricSpec(
        "tandem:num_queued_prompt_tokens",
        "gauge",
        "Prompt tokens admitted but not yet computed",
        WORKER_LABELS,
    ),
    MetricSpec(
        "tandem:prefill_tokens_per_second",
        "gauge",
        "Prompt tokens per second the worker computed lately (what admission predicts by)",
        WORKER_LABELS,
    ),
    MetricSpec(
        "tandem:prefix_cache_queries_total",
        "counter",
        "Prompt tokens looked up in the worker's prefix cache",
        WORKER_LABELS,
    ),
    MetricSpec(
        "tandem:prefix_cache_hits_total",
        "counter",
        "Prompt tokens found in the worker's prefix cache",
        WORKER_LABELS,
    ),
    MetricSpec(
        "tandem:kv_handoff_failures_total",
        "counter",
        "KV handoffs this prefill worker started that failed, by gRPC status name",
        (*WORKER_LABELS, "code"),
    ),
    MetricSpec(
        "tandem:num_preemptions_total",
        "counter",
        "Sequences preempted (their KV freed, to be recomputed)",
        WORKER_LABELS,
    ),
)
NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
