"""The arguments benchmarks/overload.py and benchmarks/simulate.py share: the cluster, the
workload (vLLM `bench serve`'s random dataset and arrivals) and the SLOs."""

from __future__ import annotations

import argparse


def add_workload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="runtime/configs/local.yaml")
    # float32: bfloat16 on a CPU without AVX512-BF16 runs ~7x slower (torch's fallback).
    p.add_argument("--dtype", default="float32")
    p.add_argument("--burstiness", type=float, nargs="+", default=[1.0, 0.3])
    p.add_argument("--input-len", type=int, default=200)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--range-ratio", type=float, default=0.25)
    p.add_argument("--num-prompts", type=int, default=150)
    p.add_argument("--slo-ttft-ms", type=float, default=2000)
    p.add_argument("--slo-tpot-ms", type=float, default=200)
    p.add_argument(
        "--admit-ttft-s", type=float, help="scheduler.ttft_slo_s (default: the TTFT SLO)"
    )
    p.add_argument(
        "--admit-tpot-s", type=float, help="scheduler.tpot_slo_s (default: the TPOT SLO)"
    )
    p.add_argument("--seed", type=int, default=0)


def admission_targets(args: argparse.Namespace) -> dict[str, float]:
    """The scheduler's admission targets for these arguments: `--admit-*-s`, else the SLO."""
    return {
        "ttft_slo_s": args.admit_ttft_s or args.slo_ttft_ms / 1000,
        "tpot_slo_s": args.admit_tpot_s or args.slo_tpot_ms / 1000,
    }
