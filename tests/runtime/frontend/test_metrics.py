"""The frontend's Prometheus metrics: vLLM's names under `tandem:`, exact counts from
finished requests and from the totals workers report (a restart never runs one back)."""

from __future__ import annotations

import pytest
from prometheus_text import names, samples, value

from runtime.engine import SamplingParams
from runtime.frontend.dispatch import _Attempt
from runtime.frontend.metric_specs import METRICS, NAMES
from runtime.frontend.metrics import FrontendMetrics
from runtime.frontend.requests import PreparedRequest
from runtime.frontend.results import Timings, Usage
from runtime.workers.events import TokenEvent
from runtime.workers.load import WorkerLoad

# What issue 15 asks for, by name.
REQUIRED = {
    "tandem:time_to_first_token_seconds",
    "tandem:time_per_output_token_seconds",
    "tandem:inter_token_latency_seconds",
    "tandem:e2e_request_latency_seconds",
    "tandem:request_queue_time_seconds",
    "tandem:request_prefill_time_seconds",
    "tandem:request_decode_time_seconds",
    "tandem:kv_transfer_time_seconds",
    "tandem:kv_transfer_bytes_total",
    "tandem:kv_handoff_failures_total",
    "tandem:kv_cache_usage_perc",
    "tandem:prefix_cache_hits_total",
    "tandem:prefix_cache_queries_total",
    "tandem:num_requests_running",
    "tandem:num_requests_waiting",
    "tandem:prompt_tokens_total",
    "tandem:generation_tokens_total",
    "tandem:admission_refusals_total",
}


def test_names_follow_vllms_scheme_under_the_tandem_prefix():
    assert REQUIRED <= set(NAMES)
    assert len(set(NAMES)) == len(NAMES)
    for m in METRICS:
        assert m.name.startswith("tandem:"), m.name
        assert m.name.endswith("_total") == (m.kind == "counter"), m.name
        assert m.name.endswith("_seconds") == (m.kind == "histogram"), m.name
        assert "model_name" not in m.labels  # every metric gets it


def loads(incarnation="a", queries=0, hits=0, failures=(), free=30):
    return [
        WorkerLoad(
            "prefill-0",
            "prefill",
            num_running=2,
            num_waiting=1,
            num_free_blocks=free,
            num_total_blocks=40,
            incarnation=incarnation,
            num_prefix_cache_queries=queries,
            num_prefix_cache_hits=hits,
            handoff_failures=failures,
        ),
        WorkerLoad("decode-0", "decode", num_free_blocks=40, num_total_blocks=40),
    ]


def test_every_declared_metric_is_exported_with_the_model_name():
    m = FrontendMetrics("smol")
    m.observe_finished(
        Timings(0.01, 0.02, 0.003, 0.04, ttft_s=0.05, e2e_s=0.1, kv_transfer_bytes=10),
        Usage(prompt_tokens=7, completion_tokens=3),
        "length",
    )
    m.observe_inter_token([0.02, 0.03])
    m.observe_refused("ttft")
    m.errors.labels("INVALID_ARGUMENT").inc()
    m.balancer_actions.labels("flip", "prefill", "done").inc()
    m.track_in_flight(lambda: 4)
    m.observe_loads(loads(failures=(("DATA_LOSS", 1),)))
    scraped = samples(m.render().decode())
    assert names(scraped) == {s for spec in METRICS for s in spec.series}
    assert all(dict(labels)["model_name"] == "smol" for _, labels in scraped)
    assert value(scraped, "tandem:num_requests_in_flight") == 4
    assert value(scraped, "tandem:prompt_tokens_total") == 7
    assert value(scraped, "tandem:generation_tokens_total") == 3
    assert value(scraped, "tandem:request_success_total", finished_reason="length") == 1
    assert value(scraped, "tandem:inter_token_latency_seconds_count") == 2
    assert value(scraped, "tandem:inter_token_latency_seconds_sum") == pytest.approx(0.05)
    assert value(scraped, "tandem:time_per_output_token_seconds_sum") == pytest.approx(0.025)
    assert value(scraped, "tandem:request_decode_time_seconds_sum") == pytest.approx(0.04)
    assert value(scraped, "tandem:kv_transfer_bytes_total") == 10
    assert value(scraped, "tandem:admission_refusals_total", reason="ttft") == 1
    assert value(scraped, "tandem:kv_cache_usage_perc", worker="prefill-0") == 0.25
    assert value(scraped, "tandem:kv_cache_usage_perc", pool="decode") == 0
    assert value(scraped, "tandem:num_requests_running", worker="prefill-0") == 2
    assert value(scraped, "tandem:pool_size", pool="prefill") == 1


def test_a_one_token_request_has_no_tpot_or_decode_time():
    m = FrontendMetrics("smol")
    m.observe_finished(Timings(ttft_s=0.05, e2e_s=0.05), Usage(3, 1), "length")
    scraped = samples(m.render().decode())
    assert value(scraped, "tandem:time_to_first_token_seconds_count") == 1
    assert value(scraped, "tandem:time_per_output_token_seconds_count") == 0
    assert value(scraped, "tandem:request_decode_time_seconds_count") == 0
    assert value(scraped, "tandem:kv_transfer_time_seconds_count") == 0


def test_worker_totals_count_their_growth_across_a_restart():
    m = FrontendMetrics("smol")

    def count(name, **labels):
        return value(samples(m.render().decode()), name, **labels)

    m.observe_loads(loads("a", queries=100, hits=32, failures=(("DATA_LOSS", 1),)))
    m.observe_loads(loads("a", queries=150, hits=48, failures=(("DATA_LOSS", 1),)))
    assert count("tandem:prefix_cache_queries_total", worker="prefill-0") == 150
    assert count("tandem:prefix_cache_hits_total", worker="prefill-0") == 48
    # A report the frontend made up for a silent worker (zeros) adds nothing...
    m.observe_loads(loads("a"))
    assert count("tandem:prefix_cache_queries_total", worker="prefill-0") == 150
    # ...and a restarted worker's totals start again from 0.
    m.observe_loads(loads("b", queries=20, failures=(("UNAVAILABLE", 2),)))
    assert count("tandem:prefix_cache_queries_total", worker="prefill-0") == 170
    assert count("tandem:kv_handoff_failures_total", code="DATA_LOSS") == 1
    assert count("tandem:kv_handoff_failures_total", code="UNAVAILABLE") == 2
    assert count("tandem:prefix_cache_queries_total", worker="decode-0") == 0


def test_a_worker_gone_from_the_reports_leaves_the_gauges():
    m = FrontendMetrics("smol")
    m.observe_loads(loads())
    m.observe_loads(loads()[1:])
    scraped = samples(m.render().decode())
    assert not value(scraped, "tandem:num_requests_running", worker="prefill-0")
    running = {dict(ls)["worker"] for n, ls in scraped if n == "tandem:num_requests_running"}
    assert running == {"decode-0"}


def test_inter_token_latencies_are_the_engines_gaps_or_the_frontends_across_a_handoff(
    monkeypatch,
):
    clock = iter([10.0, 10.5, 10.6, 11.0])
    monkeypatch.setattr("runtime.frontend.dispatch.time.monotonic", lambda: next(clock))
    a = _Attempt(PreparedRequest("r", (1, 2), SamplingParams(max_tokens=4)), "r@x")  # at 10.0
    a.chunk(TokenEvent("r", (5,), "", token_gaps_s=(None,)))  # the prefill worker's, at 10.5
    assert a.token_gaps == []  # the first token has no predecessor
    # The decode worker's first token has none on its engine: timed by arrival here (0.1 s);
    # the next was sampled there 0.02 s after it.
    a.chunk(TokenEvent("r", (6,), "", token_gaps_s=(None,)))  # at 10.6
    a.chunk(TokenEvent("r", (7, 8), "", finished=True, token_gaps_s=(0.02, 0.03)))  # at 11.0
    assert a.token_gaps == pytest.approx([0.1, 0.02, 0.03])
