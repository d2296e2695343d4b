"""An open-loop serving load generator whose flags and JSON results follow vLLM's
`vllm bench serve`, for any OpenAI-compatible server (vLLM's too) and Tandem's gRPC API.

    .venv/bin/python benchmarks/serve.py --base-url http://127.0.0.1:8000 \\
        --dataset-name random --random-input-len 200 --random-output-len 32 \\
        --num-prompts 100 --request-rate 0.5 1 2 --goodput ttft:2000 tpot:200 \\
        --result-dir results --result-filename run.json --plot-dir results

Requests are sent at their arrival times whatever the server's pace (gamma-distributed gaps,
`--burstiness` 1: Poisson; `--request-rate inf`: all at once; `--max-concurrency` caps
those in flight), each streamed (`--temperature`: unset, the server's default, as in vLLM's
client; 0: greedy). Several `--request-rate`s make a sweep
over the same prompts. Each run prints vLLM's report and, with `--save-result` or
`--result-filename`, writes its JSON (vLLM's keys: median_ttft_ms, p99_tpot_ms,
request_throughput, output_throughput, request_goodput, ...); `--plot-dir` writes latency
CDFs and goodput against the request rate as PNGs. Metric definitions: _serve_metrics.py;
datasets: _serve_datasets.py; targets: _serve_backends.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _serve_datasets as ds  # noqa: E402
from _serve_backends import BACKENDS, make_target  # noqa: E402
from _serve_metrics import (  # noqa: E402
    METRICS,
    RequestOutput,
    calculate_metrics,
    detailed,
    parse_goodput,
)
from _serve_plots import plot_runs  # noqa: E402

from runtime.client import Client  # noqa: E402

DATASETS = ("random", "sharegpt-like", "prefix", "burst")


def add_cli_args(p: argparse.ArgumentParser) -> None:
    """vLLM `bench serve`'s names for what both have; Tandem's additions are marked."""
    p.add_argument("--backend", choices=BACKENDS, default="openai")
    p.add_argument("--base-url", required=True, help="http://host:port, or host:port for gRPC")
    p.add_argument("--endpoint", default="/v1/completions")
    p.add_argument("--model", help="default: the server's first model")
    p.add_argument("--tokenizer", help="a local tokenizer directory (default: --model)")
    p.add_argument("--dataset-name", choices=DATASETS, default="random")
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--random-input-len", type=int, default=1024)
    p.add_argument("--random-output-len", type=int, default=128)
    p.add_argument("--random-range-ratio", type=float, default=0.0)
    p.add_argument("--sharegpt-like-sigma", type=float, default=0.9, help="log-normal sigma")
    p.add_argument("--sharegpt-like-max-len", type=int, default=2048)
    p.add_argument("--prefix-repetition-prefix-len", type=int, default=256)
    p.add_argument("--prefix-repetition-suffix-len", type=int, default=256)
    p.add_argument("--prefix-repetition-num-prefixes", type=int, default=10)
    p.add_argument("--prefix-repetition-output-len", type=int, default=128)
    p.add_argument("--burst-input-len", type=int, default=1024, help="the bursts' prompts")
    p.add_argument("--burst-output-len", type=int, default=16)
    p.add_argument("--burst-size", type=int, default=4, help="long prompts per burst")
    p.add_argument("--burst-interval", type=float, default=20.0, help="seconds between bursts")
    p.add_argument("--request-rate", type=float, nargs="+", default=[float("inf")])
    p.add_argument("--burstiness", type=float, default=1.0)
    p.add_argument("--max-concurrency", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--temperature", type=float, help="default: the server's (not sent)")
    p.add_argument("--goodput", nargs="+", metavar="NAME:MS", help="SLOs: ttft, tpot, e2el")
    p.add_argument("--percentile-metrics", default=",".join(METRICS))
    p.add_argument("--metric-percentiles", default="50,90,99")
    p.add_argument("--save-result", action="store_true")
    p.add_argument("--save-detailed", action="store_true", help="add the per-request lists")
    p.add_argument("--result-dir", default=".")
    p.add_argument("--result-filename")
    p.add_argument("--plot-dir", help="write latency CDFs and goodput-vs-rate PNGs here")
    p.add_argument("--disable-tqdm", action="store_true")


def server_model(args) -> str:
    """--model, else the first model the server lists."""
    if args.model:
        return args.model
    if args.backend == "tandem-grpc":
        with Client(args.base_url) as client:
            return client.list_models()[0].id
    r = httpx.get(args.base_url.rstrip("/") + "/v1/models", timeout=30)
    r.raise_for_status()
    return r.json()["data"][0]["id"]


def load_tokenizer(name: str):
    return AutoTokenizer.from_pretrained(name)


def build_dataset(args, tokenizer, rate: float) -> list[ds.Sample]:
    """The samples of `--dataset-name` (the same for every rate, except burst's arrivals)."""
    special = set(tokenizer.all_special_ids)
    tokens = ds.TokenSpace(len(tokenizer), special)
    rng = np.random.default_rng(args.seed)
    n, name = args.num_prompts, args.dataset_name
    if name == "sharegpt-like":
        return ds.sharegpt_like_dataset(
            tokens,
            rng,
            n,
            args.random_input_len,
            args.random_output_len,
            args.sharegpt_like_sigma,
            max_len=args.sharegpt_like_max_len,
        )
    if name == "prefix":
        return ds.prefix_dataset(
            tokens,
            rng,
            n,
            args.prefix_repetition_prefix_len,
            args.prefix_repetition_suffix_len,
            args.prefix_repetition_num_prefixes,
            args.prefix_repetition_output_len,
        )
    steady = ds.random_dataset(
        tokens, rng, n, args.random_input_len, args.random_output_len, args.random_range_ratio
    )
    if name == "random":
        return steady
    return ds.burst_dataset(
        tokens,
        np.random.default_rng(args.seed + 1),
        steady,
        rate,
        args.burstiness,
        args.burst_input_len,
        args.burst_output_len,
        args.burst_size,
        args.burst_interval,
    )


async def run_load(
    target,
    samples: list[ds.Sample],
    rate: float,
    burstiness: float = 1.0,
    max_concurrency: int | None = None,
    seed: int = 0,
    texts: list[str] | None = None,
    show_progress: bool = True,
) -> tuple[float, list[RequestOutput]]:
    """Sends every sample at its arrival time (its own, else vLLM's process at `rate`) and
    returns the wall time from the first send to the last answer, and the outputs in order."""
    if samples and samples[0].arrival_s is not None:
        arrivals = [s.arrival_s or 0.0 for s in samples]
    else:
        arrivals = ds.arrival_times(np.random.default_rng(seed + 2), len(samples), rate, burstiness)
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    bar = tqdm(total=len(samples), disable=not show_progress, unit="req")

    async def one(i: int) -> RequestOutput:
        if limit is None:
            out = await target(samples[i], texts[i] if texts else None)
        else:
            async with limit:
                out = await target(samples[i], texts[i] if texts else None)
        bar.update(1)
        return out

    start = time.perf_counter()
    tasks = []
    for i, at in enumerate(arrivals):
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    outputs = await asyncio.gather(*tasks)
    duration = time.perf_counter() - start
    bar.close()
    return duration, list(outputs)


def print_report(result: dict) -> None:
    """vLLM's report layout."""
    print("{:=^50}".format(" Serving Benchmark Result "))
    rows = [
        ("Successful requests:", result["completed"]),
        ("Failed requests:", result["failed"]),
        ("Benchmark duration (s):", result["duration"]),
        ("Total input tokens:", result["total_input_tokens"]),
        ("Total generated tokens:", result["total_output_tokens"]),
        ("Request throughput (req/s):", result["request_throughput"]),
        ("Request goodput (req/s):", result["request_goodput"]),
        ("Output token throughput (tok/s):", result["output_throughput"]),
        ("Total token throughput (tok/s):", result["total_token_throughput"]),
    ]
    for name in METRICS:
        for key in sorted(k for k in result if k.endswith(f"_{name}_ms") and "std" not in k):
            rows.append((f"{key.split('_')[0].capitalize()} {name.upper()} (ms):", result[key]))
    for label, value in rows:
        if value is not None:
            shown = f"{value:.2f}" if isinstance(value, float) else value
            print(f"{label:<40} {shown:<10}")
    print("=" * 50)


def result_path(args, rate: float) -> Path | None:
    if not (args.save_result or args.result_filename):
        return None
    name = args.result_filename or f"{args.backend}-{rate}qps-{args.dataset_name}.json"
    if len(args.request_rate) > 1:  # a sweep: one file per rate
        stem, suffix = Path(name).stem, Path(name).suffix or ".json"
        name = f"{stem}-{rate}qps{suffix}"
    return Path(args.result_dir) / name


async def _run_all(args, model: str, tokenizer) -> list[tuple[dict, list[RequestOutput]]]:
    percentiles = [float(p) for p in args.metric_percentiles.split(",")]
    metrics = tuple(m for m in args.percentile_metrics.split(",") if m)
    goodput = parse_goodput(args.goodput)
    target = make_target(
        args.backend, args.base_url, args.endpoint, model, args.ignore_eos, args.temperature
    )
    runs = []
    try:
        for rate in args.request_rate:
            samples = build_dataset(args, tokenizer, rate)
            texts = None
            if args.backend == "openai-chat":
                texts = [tokenizer.decode(s.prompt_token_ids) for s in samples]
            # As vLLM does: one request first, to know the server answers (not counted).
            probe = await target(samples[0], texts[0] if texts else None)
            if not probe.success:
                raise SystemExit(f"the first test request failed: {probe.error}")
            duration, outputs = await run_load(
                target,
                samples,
                rate,
                args.burstiness,
                args.max_concurrency,
                args.seed,
                texts,
                show_progress=not args.disable_tqdm,
            )
            result = {
                "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
                "backend": args.backend,
                "model_id": model,
                "tokenizer_id": args.tokenizer or model,
                "dataset_name": args.dataset_name,
                "num_prompts": len(samples),
                "request_rate": rate if rate != float("inf") else "inf",
                "burstiness": args.burstiness,
                "max_concurrency": args.max_concurrency,
                **calculate_metrics(outputs, duration, percentiles, goodput, metrics),
            }
            if args.save_detailed:
                result.update(detailed(outputs))
            print_report(result)
            path = result_path(args, rate)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(result, indent=1))
            runs.append((result, outputs))
    finally:
        await target.close()
    return runs


def main(argv: list[str] | None = None) -> list[dict]:
    """Runs the benchmark of `argv` (sys.argv when None); returns each rate's result dict."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cli_args(p)
    args = p.parse_args(argv)
    try:
        parse_goodput(args.goodput)
    except ValueError as e:
        p.error(str(e))
    model = server_model(args)
    tokenizer = load_tokenizer(args.tokenizer or model)
    runs = asyncio.run(_run_all(args, model, tokenizer))
    if args.plot_dir:
        for path in plot_runs([r for r, _ in runs], [o for _, o in runs], Path(args.plot_dir)):
            print(f"wrote {path}")
    return [r for r, _ in runs]


if __name__ == "__main__":
    main()
