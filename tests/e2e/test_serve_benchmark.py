"""benchmarks/serve.py against a tiny local cluster, over the OpenAI endpoint (completions and
chat) and over Tandem's gRPC API: every request completes with the output asked for, the JSON
has vLLM's keys, a sweep writes a file per rate and the plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cluster_helpers import tiny_cluster_config

from runtime.cluster.background import BackgroundServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import serve  # noqa: E402

NUM_PROMPTS = 6
KEYS = [
    "completed",
    "failed",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "median_ttft_ms",
    "p99_ttft_ms",
    "median_tpot_ms",
    "p90_tpot_ms",
    "mean_itl_ms",
    "p99_e2el_ms",
]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    pools = {"prefill": {"replicas": 1, "num_cpus": 1}, "decode": {"replicas": 1, "num_cpus": 1}}
    with BackgroundServer(tiny_cluster_config(tiny_model_dir, pools)) as server:
        yield server


def args(base_url: str, model_dir, *extra: str) -> list[str]:
    return [
        "--base-url", base_url, "--tokenizer", str(model_dir), "--dataset-name", "random",
        "--random-input-len", "24", "--random-output-len", "5", "--random-range-ratio", "0.5",
        "--num-prompts", str(NUM_PROMPTS), "--ignore-eos", "--seed", "3", "--disable-tqdm",
        "--temperature", "0",
        "--save-detailed", *extra,
    ]  # fmt: skip


def check_run(r: dict, num: int = NUM_PROMPTS) -> None:
    assert set(KEYS) <= set(r)
    assert (r["completed"], r["failed"]) == (num, 0), r["errors"]
    assert r["total_output_tokens"] == sum(r["output_lens"])
    for n, ttft, itl, e2el in zip(r["output_lens"], r["ttfts"], r["itls"], r["latencies"]):
        assert 2 <= n <= 8 and len(itl) == n - 1  # one token per streamed chunk
        assert 0 < ttft <= e2el and e2el == pytest.approx(ttft + sum(itl))
    assert r["median_ttft_ms"] <= r["p99_ttft_ms"] and r["median_e2el_ms"] > 0


def test_openai_sweep_and_grpc_measure_the_same_generations(server, tiny_model_dir, tmp_path):
    runs = serve.main(
        args(server.http_url, tiny_model_dir, "--request-rate", "inf", "40",
             "--goodput", "ttft:60000", "tpot:60000", "--result-dir", str(tmp_path),
             "--result-filename", "http.json", "--plot-dir", str(tmp_path))
    )  # fmt: skip
    assert [r["request_rate"] for r in runs] == ["inf", 40.0]
    for r in runs:
        check_run(r)
        # every request meets a 60 s SLO: goodput is the request throughput
        assert r["request_goodput"] == pytest.approx(r["request_throughput"])
    on_disk = json.loads((tmp_path / "http-40.0qps.json").read_text())
    assert on_disk["median_ttft_ms"] == runs[1]["median_ttft_ms"]
    assert (tmp_path / "http-infqps.json").exists()
    assert (tmp_path / "latency_cdf.png").stat().st_size > 10_000
    assert (tmp_path / "goodput_vs_rate.png").stat().st_size > 10_000

    (grpc,) = serve.main(
        args(server.grpc_url, tiny_model_dir, "--backend", "tandem-grpc",
             "--model", server.config.model_name)
    )  # fmt: skip
    check_run(grpc)
    assert grpc["request_goodput"] is None
    # the same prompts, greedy: both APIs return the same text and token counts
    assert grpc["generated_texts"] == runs[0]["generated_texts"]
    assert grpc["output_lens"] == runs[0]["output_lens"]
    assert grpc["input_lens"] == runs[0]["input_lens"]


def test_chat_endpoint_and_a_bursty_dataset(server, tiny_model_dir):
    (chat,) = serve.main(
        args(server.http_url, tiny_model_dir, "--backend", "openai-chat", "--endpoint",
             "/v1/chat/completions", "--max-concurrency", "2")
    )  # fmt: skip
    check_run(chat)
    (burst,) = serve.main(
        args(server.http_url, tiny_model_dir, "--dataset-name", "burst", "--request-rate", "20",
             "--burst-input-len", "200", "--burst-output-len", "2", "--burst-size", "2",
             "--burst-interval", "10")
    )  # fmt: skip
    assert burst["completed"] == NUM_PROMPTS + 2 and burst["failed"] == 0
    assert sorted(burst["input_lens"])[-2:] == [200, 200]
