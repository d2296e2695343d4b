"""Overload: goodput at the SLO when the offered load exceeds what the cluster sustains,
measured with vLLM's own `bench serve` against Tandem's OpenAI endpoint.

    make install-vllm
    .venv/bin/python benchmarks/overload.py --sustained-rate 1.5 [--overload 1.5]

Starts the cluster of `--config` (default runtime/configs/local.yaml: 1 prefill + 1 decode,
SmolLM2, in `--dtype`) in this process, with admission on (`scheduler.ttft_slo_s` and
`tpot_slo_s` = `--admit-ttft-s` and `--admit-tpot-s`, by default the SLO) or off
(`--admission off`: no SLO and no queue bound, every request queued, as vLLM and SGLang do).
For each arrival process (`--burstiness`, 1.0: Poisson; below 1: bursts) it runs
`vllm.benchmarks.serve` (from `--vllm-python`'s environment) at the sustained rate and at
`--overload` times it, random prompts of `--input-len` tokens and `--output-len` output
tokens, with `--goodput ttft:MS tpot:MS`. Meanwhile a probe sends a one-token request of a
prompt as long as the workload's every `--probe-s` and times the answers that came back 429.

Prints per run: offered and achieved rates, completed and refused requests, goodput, median
and p99 TTFT and TPOT, how many completed requests missed the TTFT or the TPOT SLO, the
probe's refusal latency, and whether every KV block came back once the load stopped.
Writes the raw vLLM results and a summary.json under `--out`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _workload import add_workload_args, admission_targets  # noqa: E402

from runtime.cluster import load_cluster_config  # noqa: E402
from runtime.cluster.background import BackgroundServer  # noqa: E402

# vLLM's `vllm` command does not start here; its benchmark is called as a module.
BENCH = (
    "import argparse, sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "p = argparse.ArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n"
)


class Probe(threading.Thread):
    """Sends a one-token completion of a workload-sized prompt (`prompt_len` token ids) every
    `period_s` and records how fast refusals come (vLLM's benchmark keeps no latency of a
    failed request)."""

    def __init__(self, url: str, model: str, period_s: float, prompt_len: int):
        super().__init__(daemon=True)
        self.url, self.model, self.period_s = url, model, period_s
        self.prompt = [1000 + i % 5000 for i in range(prompt_len)]
        self.refusals: list[float] = []  # seconds to a 429
        self.stop = threading.Event()

    def run(self) -> None:
        body = {"model": self.model, "prompt": self.prompt, "max_tokens": 1}
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stop.wait(self.period_s):
                start = time.monotonic()
                r = http.post("/v1/completions", json=body)
                if r.status_code == 429:
                    self.refusals.append(time.monotonic() - start)


def run_bench(args, server, rate: float, burstiness: float, name: str) -> dict:
    out = Path(args.out)
    cmd = [
        args.vllm_python,
        "-c",
        BENCH,
        "--backend",
        "openai",
        "--base-url",
        server.http_url,
        "--endpoint",
        "/v1/completions",
        "--model",
        server.config.model_name,
        "--tokenizer",
        server.config.model.path,
        "--dataset-name",
        "random",
        "--random-input-len",
        str(args.input_len),
        "--random-output-len",
        str(args.output_len),
        "--random-range-ratio",
        str(args.range_ratio),
        "--num-prompts",
        str(args.num_prompts),
        "--request-rate",
        str(rate),
        "--burstiness",
        str(burstiness),
        "--seed",
        str(args.seed),
        "--ignore-eos",
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--metric-percentiles",
        "50,90,99",
        "--goodput",
        f"ttft:{args.slo_ttft_ms}",
        f"tpot:{args.slo_tpot_ms}",
        "--save-result",
        "--save-detailed",
        "--result-dir",
        str(out),
        "--result-filename",
        f"{name}.json",
    ]
    probe = Probe(server.http_url, server.config.model_name, args.probe_s, args.input_len)
    probe.start()
    try:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if args.quiet else None)
    finally:
        probe.stop.set()
        probe.join()
    result = json.loads((out / f"{name}.json").read_text())
    errors = result["errors"]
    ttfts = [t for t, e in zip(result["ttfts"], errors) if not e]
    # vLLM's TPOT of a request: the time after its first token over its other tokens.
    tpots = [
        sum(itl) / (n - 1)
        for itl, n, e in zip(result["itls"], result["output_lens"], errors)
        if not e and n > 1
    ]
    refused = sum(e == "Too Many Requests" for e in errors)
    return {
        "run": name,
        "offered_rate": rate,
        "burstiness": burstiness,
        "completed": result["completed"],
        "refused": refused,
        "other_errors": sum(bool(e) for e in errors) - refused,
        "request_throughput": result["request_throughput"],
        "goodput": result.get("request_goodput") or 0.0,
        "median_ttft_ms": result["median_ttft_ms"],
        "p99_ttft_ms": result["p99_ttft_ms"],
        "median_tpot_ms": result["median_tpot_ms"],
        "p99_tpot_ms": result["p99_tpot_ms"],
        "completed_over_ttft_slo": sum(t * 1000 > args.slo_ttft_ms for t in ttfts),
        "completed_over_tpot_slo": sum(t * 1000 > args.slo_tpot_ms for t in tpots),
        "refusal_ms_median": 1000 * statistics.median(probe.refusals) if probe.refusals else None,
        "refusal_ms_max": 1000 * max(probe.refusals) if probe.refusals else None,
        "blocks_back": blocks_back(server),
    }


def blocks_back(server, timeout_s: float = 30.0) -> bool:
    """Whether every worker's free blocks return to its total once the load has stopped."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        loads = [ray.get(w.actor.load.remote()) for w in server.workers]
        if all(w.num_free_blocks == w.num_total_blocks for w in loads):
            return True
        time.sleep(0.2)
    return False


def cluster(args):
    scheduler: dict = admission_targets(args)
    if args.admission == "off":
        scheduler = {"ttft_slo_s": None, "tpot_slo_s": None, "max_queued_prompt_tokens": 0}
    overrides = {
        "engine": {"dtype": args.dtype},
        "server": {"grpc_port": 0, "http_port": 0},
        "scheduler": scheduler,
    }
    return load_cluster_config(args.config, overrides=overrides)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_args(p)
    p.add_argument("--vllm-python", default=".venv/bin/python")
    p.add_argument("--sustained-rate", type=float, required=True, help="req/s it sustains")
    p.add_argument("--overload", type=float, default=1.5, help="overload / sustained rate")
    p.add_argument("--admission", choices=["on", "off"], default="on")
    p.add_argument("--probe-s", type=float, default=3.0)
    p.add_argument("--out", default="overload-results")
    p.add_argument("--quiet", action="store_true", help="hide vLLM's own report")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = []
    with BackgroundServer(cluster(args)) as server:
        with httpx.Client(base_url=server.http_url, timeout=120) as http:  # warm-up
            for _ in range(4):
                body = {"model": server.config.model_name, "prompt": "Hello " * 300}
                http.post("/v1/completions", json={**body, "max_tokens": 8}).raise_for_status()
        for burstiness in args.burstiness:
            for label, rate in (
                ("sustained", args.sustained_rate),
                ("overload", args.sustained_rate * args.overload),
            ):
                name = f"{args.admission}-{label}-b{burstiness}"
                rows.append(run_bench(args, server, rate, burstiness, name))
                print(json.dumps(rows[-1]), flush=True)
    (Path(args.out) / f"summary-{args.admission}.json").write_text(json.dumps(rows, indent=1))
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    cols = (
        ("run", "{}"),
        ("offered_rate", "{:.2f}"),
        ("completed", "{}"),
        ("refused", "{}"),
        ("other_errors", "{}"),
        ("request_throughput", "{:.2f}"),
        ("goodput", "{:.2f}"),
        ("median_ttft_ms", "{:.0f}"),
        ("p99_ttft_ms", "{:.0f}"),
        ("median_tpot_ms", "{:.1f}"),
        ("p99_tpot_ms", "{:.1f}"),
        ("completed_over_ttft_slo", "{}"),
        ("completed_over_tpot_slo", "{}"),
        ("refusal_ms_median", "{:.1f}"),
        ("refusal_ms_max", "{:.1f}"),
        ("blocks_back", "{}"),
    )
    print("\n" + " | ".join(c for c, _ in cols))
    for r in rows:
        print(" | ".join("-" if r[c] is None else f.format(r[c]) for c, f in cols))
    for b in sorted({r["burstiness"] for r in rows}):
        pair = {r["run"].split("-")[1]: r for r in rows if r["burstiness"] == b}
        if pair.get("sustained", {}).get("goodput"):
            ratio = pair["overload"]["goodput"] / pair["sustained"]["goodput"]
            print(f"burstiness {b}: goodput at overload / sustained = {ratio:.2f}")


if __name__ == "__main__":
    main()
