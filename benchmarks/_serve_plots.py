"""PNG plots of benchmarks/serve.py runs: latency CDFs per request rate, and goodput and
request throughput against the offered request rate."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _serve_metrics import RequestOutput  # noqa: E402


def latency_samples(outputs: list[RequestOutput]) -> dict[str, list[float]]:
    """Milliseconds per metric over the successful requests (ITL: every gap)."""
    done = [o for o in outputs if o.success]
    return {
        "TTFT": [o.ttft * 1000 for o in done],
        "TPOT": [o.tpot * 1000 for o in done if o.output_tokens > 1],
        "ITL": [g * 1000 for o in done for g in o.itl],
        "E2EL": [o.latency * 1000 for o in done],
    }


def plot_latency_cdfs(labels: list[str], runs: list[list[RequestOutput]], path: Path) -> Path:
    """One panel per metric, one empirical CDF per run."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for label, outputs in zip(labels, runs):
        for ax, (name, values) in zip(axes, latency_samples(outputs).items()):
            if values:
                xs = np.sort(values)
                ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, label=label)
    for ax, name in zip(axes, ("TTFT", "TPOT", "ITL", "E2EL")):
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("fraction of requests" if name != "ITL" else "fraction of gaps")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_goodput(series: dict[str, list[tuple[float, float, float]]], path: Path) -> Path:
    """Per series name, points (offered rate, request throughput, goodput): goodput solid,
    throughput dashed."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        rates, throughput, goodput = zip(*sorted(points))
        line = ax.plot(rates, goodput, marker="o", label=f"{name} goodput")[0]
        ax.plot(rates, throughput, ls="--", color=line.get_color(), label=f"{name} throughput")
    ax.set_xlabel("offered request rate (req/s)")
    ax.set_ylabel("req/s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_runs(results: list[dict], runs: list[list[RequestOutput]], out_dir: Path) -> list[Path]:
    """serve.py's plots of a sweep: latency_cdf.png always; goodput_vs_rate.png when the runs
    measured goodput at finite rates."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [f"{r['request_rate']} req/s" for r in results]
    paths = [plot_latency_cdfs(labels, runs, out_dir / "latency_cdf.png")]
    points = [
        (float(r["request_rate"]), r["request_throughput"], r["request_goodput"])
        for r in results
        if r["request_goodput"] is not None and r["request_rate"] != "inf"
    ]
    if points:
        paths.append(plot_goodput({results[0]["backend"]: points}, out_dir / "goodput_vs_rate.png"))
    return paths
