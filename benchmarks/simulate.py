"""The scheduler's simulator, calibrated on this machine, against a measured overload run.

    .venv/bin/python benchmarks/simulate.py --rates 1.5 2.25 \\
        [--compare overload-results/summary-on.json]

Calibrates the cost models from the engine itself, built with each pool's settings from
`--config` (one torch thread per worker, as the workers run): a prefill step's time against
its prompt tokens and a decode step's time against its batch size, each a least-squares line
over a few measured points. Then simulates the cluster of the config (its pools and
`scheduler` section, admission at `--admit-ttft-s` / `--admit-tpot-s`, default the SLO) on
vLLM `bench serve`'s random workload (`--input-len`, `--output-len`, `--range-ratio`,
`--num-prompts`, gamma arrivals of `--burstiness`) at each rate, and prints the predicted
figures. With `--compare`, the summary benchmarks/overload.py wrote, it prints the measured
figures beside the predicted ones and each one's error.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _workload import add_workload_args, admission_targets  # noqa: E402

from runtime.cluster import load_cluster_config  # noqa: E402
from runtime.engine import Engine, SamplingParams  # noqa: E402
from scheduler.costs import DecodeCost, PrefillCost, TransferCost, WorkerSpec  # noqa: E402
from scheduler.simulator import SimRequest, Simulator  # noqa: E402
from scheduler.workload import gamma_arrivals, summarize  # noqa: E402

PREFILL_POINTS = (64, 128, 256, 512)
DECODE_POINTS = (1, 4, 8, 16, 32)


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y against x."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return max(my - slope * mx, 0.0), slope


def timed_steps(engine: Engine, prompts: list[list[int]], max_tokens: int) -> list[float]:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for p in prompts:
        engine.add_request(params=params, prompt_token_ids=p)
    times = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    return times


def calibrate(engine_config, repeats: int = 3) -> tuple[PrefillCost, DecodeCost, int]:
    """The engine's step costs, and its KV bytes per token."""
    engine = Engine(replace(engine_config, role="colocated"))
    rng = random.Random(0)

    def prompt(n: int) -> list[int]:
        return [rng.randrange(100, 10000) for _ in range(n)]

    timed_steps(engine, [prompt(64)], 4)  # warm-up
    prefill = []
    for n in PREFILL_POINTS:
        t = statistics.median(timed_steps(engine, [prompt(n)], 1)[0] for _ in range(repeats))
        prefill.append((n, t))
    decode = []
    for b in DECODE_POINTS:
        steps = timed_steps(engine, [prompt(16) for _ in range(b)], 12)
        decode.append((b, statistics.median(steps[2:])))  # past the prompts' step
    p0, p1 = fit(prefill)
    d0, d1 = fit(decode)
    g = engine.runner.geometry
    kv_bytes = 2 * g.num_layers * g.num_kv_heads * g.head_dim * engine.kv.dtype.itemsize
    return PrefillCost(token_s=p1, step_s=p0), DecodeCost(step_s=d0, seq_s=d1), kv_bytes


def workload(args, rate: float, burstiness: float) -> list[SimRequest]:
    rng = random.Random(args.seed)

    def length(n: int) -> int:
        return rng.randint(int(n * (1 - args.range_ratio)), int(n * (1 + args.range_ratio)))

    return [
        SimRequest(
            t,
            tuple(rng.randrange(100, 10000) for _ in range(length(args.input_len))),
            max(length(args.output_len), 1),
        )
        for t in gamma_arrivals(rate, args.num_prompts, burstiness, args.seed)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_args(p)
    p.add_argument("--rates", type=float, nargs="+", required=True)
    p.add_argument("--kv-gbps", type=float, default=1.0, help="KV handoff GB/s")
    p.add_argument("--compare", help="benchmarks/overload.py's summary JSON")
    args = p.parse_args()

    cluster = load_cluster_config(args.config, overrides={"engine": {"dtype": args.dtype}})
    specs = []
    for pool in cluster.pools:
        if not pool.replicas:
            continue
        ec = cluster.engine_config(pool.role)
        prefill, decode, kv_bytes = calibrate(ec)
        print(f"{pool.role}: {prefill}, {decode}", flush=True)
        for i in range(pool.replicas):
            specs.append(
                WorkerSpec(
                    f"{pool.role}-{i}",
                    pool.role,
                    prefill=prefill,
                    decode=decode,
                    max_num_batched_tokens=ec.scheduler.max_num_batched_tokens,
                    max_num_seqs=ec.scheduler.max_num_seqs,
                    num_blocks=4096,
                    block_size=ec.cache.block_size,
                )
            )
    transfer = TransferCost(kv_bytes, args.kv_gbps * 1e9, latency_s=0.005)
    config = replace(cluster.scheduler, **admission_targets(args))
    measured = {}
    if args.compare:
        for row in json.loads(Path(args.compare).read_text()):
            measured[(row["offered_rate"], row["burstiness"])] = row
    for burstiness in args.burstiness:
        for rate in args.rates:
            reqs = Simulator(specs, config, transfer).run(workload(args, rate, burstiness))
            s = summarize(reqs, args.slo_ttft_ms / 1000, args.slo_tpot_ms / 1000)
            row = {
                "rate": rate,
                "burstiness": burstiness,
                "refused": s.refused,
                "request_throughput": round(s.request_throughput, 3),
                "goodput": round(s.goodput, 3),
                "median_ttft_ms": round(1000 * s.median_ttft_s),
                "median_tpot_ms": round(1000 * s.median_tpot_s, 1),
            }
            print("predicted", json.dumps(row))
            m = measured.get((rate, burstiness))
            if m:
                errors = {
                    k: f"{(row[k] - m[k]) / m[k]:+.0%}" if m[k] else "-"
                    for k in ("request_throughput", "goodput", "median_ttft_ms", "median_tpot_ms")
                }
                print("measured ", json.dumps({k: m[k] for k in errors}), "error", errors)


if __name__ == "__main__":
    main()
