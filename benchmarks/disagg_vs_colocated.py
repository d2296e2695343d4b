"""Disaggregated against colocated on equal total hardware: the colocated baseline (one worker
on every core, as one vLLM instance would run) against each prefill:decode split the cores
allow (one single-threaded worker per core), over a rate sweep of a workload with bursts of
long prompts over a steady stream, measured by benchmarks/serve.py.

    .venv/bin/python benchmarks/disagg_vs_colocated.py --request-rate 0.5 1 1.5

With `--cores N` (default: this host's) the baseline is one colocated worker with N torch
threads pinned to cores 0..N-1, and a split P:D has P prefill and D = N - P decode workers, one
thread each, each pinned to its own core (every thread of the worker's process, after its
warm-up, so the OpenMP pool is pinned too); on a 2-core host that is 1P+1D against one
colocated worker on both cores. Every configuration serves the same prompts at the same
arrival times (`--seed`). Per configuration and rate it prints goodput at the SLO
(`--goodput`), p99 TTFT, p99 TPOT and p99 ITL, and each as a ratio to the colocated baseline
at that rate (goodput: higher is better; latencies: lower); writes each run's JSON,
summary.json and disagg_vs_colocated.png under `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import httpx
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import ray  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import serve  # noqa: E402

from runtime.cluster import parse_cluster_config  # noqa: E402
from runtime.cluster.background import BackgroundServer  # noqa: E402

COMPARED = ("request_goodput", "p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms")


def layouts(cores: int) -> dict[str, dict]:
    """Pools and the cores of each worker (in start order), per configuration name."""
    out = {
        "colocated": {
            "pools": {"colocated": {"replicas": 1, "num_cpus": cores}},
            "threads": {"colocated": cores},
            "cores": [list(range(cores))],
        }
    }
    for p in range(1, cores):
        out[f"{p}P+{cores - p}D"] = {
            "pools": {
                "prefill": {"replicas": p, "num_cpus": 1},
                "decode": {"replicas": cores - p, "num_cpus": 1},
            },
            "threads": {"prefill": 1, "decode": 1},
            "cores": [[c] for c in range(cores)],
        }
    return out


def worker_pid(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def pin(pid: int, cores: list[int]) -> None:
    """Every thread of process `pid` onto `cores` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), set(cores))
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


def config(args, name: str, layout: dict):
    pools = {
        pool: {**spec, "engine": {"num_threads": layout["threads"][pool]}}
        for pool, spec in layout["pools"].items()
    }
    data = yaml.safe_load(Path(args.config).read_text())
    data["pools"] = pools  # replaced, not merged: a colocated pool excludes the others
    overrides = {
        "engine": {"dtype": args.dtype},
        "server": {"grpc_port": 0, "http_port": 0},
        "ray": {"num_cpus": args.cores},
    }
    return parse_cluster_config(data, overrides=overrides)


def serve_argv(args, base_url: str, model: str, tokenizer: str, name: str) -> list[str]:
    return [
        "--base-url", base_url, "--model", model, "--tokenizer", tokenizer,
        "--dataset-name", "burst", "--random-input-len", str(args.input_len),
        "--random-output-len", str(args.output_len), "--random-range-ratio", "0.25",
        "--burst-input-len", str(args.burst_input_len), "--burst-size", str(args.burst_size),
        "--burst-interval", str(args.burst_interval), "--burst-output-len", "16",
        "--num-prompts", str(args.num_prompts), "--seed", str(args.seed), "--ignore-eos",
        "--request-rate", *map(str, args.request_rate), "--goodput", *args.goodput,
        "--result-dir", args.out, "--result-filename", f"{name}.json", "--disable-tqdm",
    ]  # fmt: skip


def run_config(args, name: str, layout: dict) -> list[dict]:
    with BackgroundServer(config(args, name, layout)) as server:
        model = server.config.model_name
        with httpx.Client(base_url=server.http_url, timeout=300) as http:  # warm-up
            for n in (args.input_len, args.burst_input_len):
                body = {"model": model, "prompt": [1000] * n, "max_tokens": 4}
                http.post("/v1/completions", json=body).raise_for_status()
        for worker, cores in zip(server.workers, layout["cores"]):
            pin(worker_pid(worker.actor), cores)
            print(f"{name}: {worker.name} pinned to cores {cores}", flush=True)
        argv = serve_argv(args, server.http_url, model, server.config.model.path, name)
        return serve.main(argv)


def ratios(results: dict[str, list[dict]], baseline: str = "colocated") -> list[dict]:
    """One row per configuration and rate: the compared metrics and each over the baseline's
    at the same rate."""
    rows = []
    for name, runs in results.items():
        for run, base in zip(runs, results[baseline]):
            row = {"config": name, "request_rate": run["request_rate"]}
            for key in COMPARED:
                row[key] = run[key]
                row[f"{key}_ratio"] = run[key] / base[key] if base[key] else None
            rows.append(row)
    return rows


def plot(rows: list[dict], path: Path) -> Path:
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    labels = ("goodput (req/s)", "p99 TTFT (ms)", "p99 TPOT (ms)", "p99 ITL (ms)")
    for name in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == name]
        rates = [float(r["request_rate"]) for r in mine]
        for ax, key in zip(axes, COMPARED):
            ax.plot(rates, [r[key] for r in mine], marker="o", label=name)
    for ax, label in zip(axes, labels):
        ax.set_xlabel("offered request rate (req/s)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="runtime/configs/local.yaml")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--request-rate", type=float, nargs="+", default=[0.5, 1.0, 1.5])
    p.add_argument("--num-prompts", type=int, default=60)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--burst-input-len", type=int, default=1024)
    p.add_argument("--burst-size", type=int, default=3)
    p.add_argument("--burst-interval", type=float, default=15.0)
    p.add_argument("--goodput", nargs="+", default=["ttft:2000", "tpot:100"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="disagg-vs-colocated-results")
    args = p.parse_args()
    if args.cores < 2:
        p.error("--cores: a split needs at least 2 cores")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = {name: run_config(args, name, lay) for name, lay in layouts(args.cores).items()}
    rows = ratios(results)
    (Path(args.out) / "summary.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {plot(rows, Path(args.out) / 'disagg_vs_colocated.png')}")
    print("\nconfig | req/s | goodput (x colocated) | p99 TTFT ms (x) | p99 TPOT ms (x) | p99 ITL")
    for r in rows:
        cells = [
            f"{r[k]:.2f} ({r[k + '_ratio']:.2f}x)" if r[k + "_ratio"] is not None else f"{r[k]:.2f}"
            for k in COMPARED
        ]
        print(" | ".join([r["config"], str(r["request_rate"]), *cells]))


if __name__ == "__main__":
    main()
