"""benchmarks/serve.py's metric arithmetic on synthetic timings against hand-computed values
(vLLM `bench serve`'s definitions and keys)."""

from __future__ import annotations

import pytest
from _serve_metrics import RequestOutput, calculate_metrics, detailed, parse_goodput


def outputs() -> list[RequestOutput]:
    # a: 4 tokens, TTFT 0.1, gaps 0.02 0.03 0.05 -> E2EL 0.2, TPOT (0.2-0.1)/3
    a = RequestOutput(10, True, 4, ttft=0.1, latency=0.2, itl=[0.02, 0.03, 0.05])
    # b: 2 tokens, TTFT 0.3, one gap 0.1 -> E2EL 0.4, TPOT 0.1
    b = RequestOutput(20, True, 2, ttft=0.3, latency=0.4, itl=[0.1])
    # c: one token: no TPOT sample, counts TPOT 0 for goodput
    c = RequestOutput(30, True, 1, ttft=0.5, latency=0.5)
    failed = RequestOutput(40, False, error="HTTP 429")
    return [a, b, c, failed]


def test_counts_throughputs_and_latency_statistics():
    r = calculate_metrics(outputs(), duration_s=2.0, percentiles=[50, 90, 99])
    assert (r["completed"], r["failed"]) == (3, 1)
    assert (r["total_input_tokens"], r["total_output_tokens"]) == (60, 7)
    assert r["request_throughput"] == pytest.approx(1.5)
    assert r["output_throughput"] == pytest.approx(3.5)
    assert r["total_token_throughput"] == pytest.approx(33.5)
    assert r["request_goodput"] is None
    assert r["mean_ttft_ms"] == pytest.approx(300)
    assert r["median_ttft_ms"] == pytest.approx(300)
    # numpy's linear interpolation over [100, 300, 500]: p90 = 300 + 0.8 * 200
    assert r["p90_ttft_ms"] == pytest.approx(460)
    assert r["p99_ttft_ms"] == pytest.approx(496)
    # TPOT excludes the first token and the one-token request: [33.33, 100]
    assert r["mean_tpot_ms"] == pytest.approx((100 / 3 + 100) / 2)
    assert r["median_tpot_ms"] == pytest.approx((100 / 3 + 100) / 2)
    # ITL: every gap, [20, 30, 50, 100]
    assert r["mean_itl_ms"] == pytest.approx(50)
    assert r["median_itl_ms"] == pytest.approx(40)
    assert r["p99_itl_ms"] == pytest.approx(50 + 0.97 * 50)
    assert r["median_e2el_ms"] == pytest.approx(400)
    # E2EL [200, 400, 500]: mean 366.67, deviations -166.67, 33.33, 133.33 (population std)
    assert r["std_e2el_ms"] == pytest.approx(
        ((500 / 3) ** 2 + (100 / 3) ** 2 + (400 / 3) ** 2) ** 0.5 / 3**0.5
    )


def test_goodput_counts_requests_meeting_every_slo():
    outs = outputs()
    # TTFT <= 300 ms: a, b; TPOT <= 50 ms: a (33 ms), c (one token: 0) -> both: a only
    r = calculate_metrics(outs, 2.0, goodput=parse_goodput(["ttft:300", "tpot:50"]))
    assert r["request_goodput"] == pytest.approx(0.5)
    assert calculate_metrics(outs, 2.0, goodput={"e2el": 450})["request_goodput"] == 1.0
    # the SLO is inclusive, as vLLM's (s >= r)
    assert calculate_metrics(outs, 1.0, goodput={"ttft": 100})["request_goodput"] == 1.0


def test_no_success_reports_zeros_and_detailed_lists_keep_failures():
    r = calculate_metrics([RequestOutput(5, False, error="x")], 1.0, percentiles=[99])
    assert r["completed"] == 0 and r["median_ttft_ms"] == 0 and r["p99_itl_ms"] == 0
    d = detailed(outputs())
    assert d["output_lens"] == [4, 2, 1, 0] and d["errors"][-1] == "HTTP 429"
    assert d["input_lens"] == [10, 20, 30, 40]


def test_percentile_keys_follow_vllm_naming():
    r = calculate_metrics(outputs(), 1.0, percentiles=[99.9, 50], metrics=("ttft",))
    assert {"p99.9_ttft_ms", "p50_ttft_ms", "median_ttft_ms"} <= set(r)
    assert "mean_tpot_ms" not in r


@pytest.mark.parametrize("bad", ["ttft", "ttft:x", "latency:5", "tpot:-1"])
def test_bad_goodput_pairs_are_refused_with_what_to_fix(bad):
    with pytest.raises(ValueError, match="--goodput"):
        parse_goodput([bad])
