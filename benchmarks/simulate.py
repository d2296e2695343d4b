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
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _workload import add_workload_args, admission_targets  # noqa: E402

from runtime.calibrate import engine_costs  # noqa: E402
from runtime.cluster import load_cluster_config  # noqa: E402
from scheduler.costs import TransferCost, WorkerSpec  # noqa: E402
from scheduler.planner.workload_file import WorkloadSpec  # noqa: E402
from scheduler.simulator import SimRequest, Simulator  # noqa: E402
from scheduler.workload import summarize  # noqa: E402


def workload(args, rate: float, burstiness: float) -> list[SimRequest]:
    spec = WorkloadSpec(
        "simulate",
        args.input_len,
        args.output_len,
        rate,
        args.range_ratio,
        args.num_prompts,
        burstiness,
        args.seed,
    )
    return spec.requests()


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
        prefill, decode, kv_bytes, _ = engine_costs(ec)
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
