"""Soak: steady mixed load on a local cluster for a long time, watching memory, errors, latency.

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--concurrency 4] [--out soak-results]

Starts the cluster of `--config` (default runtime/configs/local.yaml: 1 prefill + 1 decode,
SmolLM2) in this process on ephemeral ports, then `--concurrency` clients loop requests for
`--minutes`: prompts of 8-200 words, 4-64 output tokens, alternating gRPC streams (SDK),
HTTP streaming and HTTP non-streaming completions. Every `--sample-s` it records each
worker's RSS, the frontend process's RSS, open streams, free KV blocks, and the requests
finished in the interval (count, errors, median TTFT and end-to-end latency).

Writes samples.csv, summary.json and (with matplotlib) soak.png under `--out`, and prints
the summary: per worker the RSS growth from the end of the warm-up (the first 10% of the
run) to the largest later sample; errors by kind; the median latency of the last tenth of
the run against the first tenth after warm-up (drift). The request loops are bounded by the
duration and target only this process's loopback ports.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.client import AsyncClient, RetryPolicy, TandemError  # noqa: E402
from runtime.cluster import load_cluster_config  # noqa: E402
from runtime.cluster.background import BackgroundServer  # noqa: E402

WORDS = (
    "the cache keeps blocks of tokens while prefill computes prompts and decode streams "
    "answers back to every client that asked a question about serving models"
).split()


class Load:
    """The client side: request loops and what they measured."""

    def __init__(self, server, seed: int):
        self.server = server
        self.rng = random.Random(seed)
        self.finished: list[tuple[float, float, float]] = []  # (end, ttft s, e2e s)
        self.errors: dict[str, int] = {}
        self.t0 = time.monotonic()

    def prompt(self) -> tuple[str, int]:
        n = self.rng.randint(8, 200)
        return " ".join(self.rng.choice(WORDS) for _ in range(n)), self.rng.randint(4, 64)

    async def loop(self, index: int, until: float) -> None:
        async with (
            AsyncClient(
                self.server.grpc_url, timeout=120, retry=RetryPolicy(max_attempts=1)
            ) as client,
            httpx.AsyncClient(base_url=self.server.http_url, timeout=120) as http,
        ):
            kind = index
            while time.monotonic() < until:
                prompt, max_tokens = self.prompt()
                start = time.monotonic()
                try:
                    ttft = await (self.grpc, self.http_stream, self.http_plain)[kind % 3](
                        client, http, prompt, max_tokens, start
                    )
                    self.finished.append((time.monotonic(), ttft, time.monotonic() - start))
                except (TandemError, httpx.HTTPError, RuntimeError) as e:
                    name = type(e).__name__
                    self.errors[name] = self.errors.get(name, 0) + 1
                    api = ("gRPC", "HTTP stream", "HTTP")[kind % 3]
                    print(
                        f"error at {time.monotonic() - self.t0:.0f} s ({api}): {name}: {e}",
                        file=sys.stderr,
                        flush=True,
                    )
                kind += 1

    @staticmethod
    async def grpc(client, http, prompt, max_tokens, start) -> float:
        ttft = None
        async for chunk in client.stream(
            prompt, max_tokens=max_tokens, temperature=0.8, ignore_eos=True
        ):
            if ttft is None and chunk.token_ids:
                ttft = time.monotonic() - start
        return ttft or 0.0

    @staticmethod
    async def http_stream(client, http, prompt, max_tokens, start) -> float:
        body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
        ttft = None
        async with http.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}")
            async for line in r.aiter_lines():
                if '"error"' in line:
                    raise RuntimeError(line)
                if ttft is None and line.startswith("data: {"):
                    ttft = time.monotonic() - start
        return ttft or 0.0

    @staticmethod
    async def http_plain(client, http, prompt, max_tokens, start) -> float:
        r = await http.post(
            "/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
        )
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}")
        return time.monotonic() - start  # no stream: the first token comes with the last


def sample(server, load: Load, t0: float, since: float) -> dict:
    now = time.monotonic()
    row = {
        "t_s": round(now - t0, 1),
        "frontend_rss_mib": psutil.Process().memory_info().rss / 2**20,
    }
    for w in server.workers:
        row[f"{w.name}_rss_mib"] = ray.get(w.actor.rss_bytes.remote()) / 2**20
        row[f"{w.name}_open_streams"] = ray.get(w.actor.num_open_streams.remote())
        row[f"{w.name}_free_blocks"] = ray.get(w.actor.num_free_blocks.remote())
    done = [f for f in load.finished if since <= f[0] < now]
    row.update(
        requests=len(done),
        errors=sum(load.errors.values()),
        ttft_p50_s=statistics.median(f[1] for f in done) if done else None,
        e2e_p50_s=statistics.median(f[2] for f in done) if done else None,
    )
    return row


async def run(server, args) -> list[dict]:
    load = Load(server, args.seed)
    t0 = time.monotonic()
    until = t0 + args.minutes * 60
    loops = [asyncio.create_task(load.loop(i, until)) for i in range(args.concurrency)]
    rows, since = [], t0
    while time.monotonic() < until:
        await asyncio.sleep(min(args.sample_s, max(until - time.monotonic(), 0.1)))
        row = await asyncio.to_thread(sample, server, load, t0, since)
        since = time.monotonic()
        rows.append(row)
        print(json.dumps(row), flush=True)
    await asyncio.gather(*loops)
    rows[-1]["errors_by_kind"] = dict(load.errors)
    return rows


def summarize(rows: list[dict], workers: list[str]) -> dict:
    warm = max(1, len(rows) // 10)
    after = rows[warm - 1 :]
    out = {
        "samples": len(rows),
        "requests": sum(r["requests"] for r in rows),
        "errors": rows[-1]["errors"],
        "errors_by_kind": rows[-1].get("errors_by_kind", {}),
    }
    for name in [*workers, "frontend"]:
        key = f"{name}_rss_mib"
        base, peak = after[0][key], max(r[key] for r in after)
        out[f"{name}_rss_mib"] = {
            "after_warmup": round(base, 1),
            "max": round(peak, 1),
            "last": round(rows[-1][key], 1),
            "growth_pct": round(100 * (peak - base) / base, 1),
        }
    tenth = max(1, len(after) // 10)

    def p50(part):
        vals = [r["e2e_p50_s"] for r in part if r["e2e_p50_s"] is not None]
        return statistics.median(vals) if vals else None

    first, last = p50(after[:tenth]), p50(after[-tenth:])
    out["e2e_p50_s"] = {
        "first_tenth": first,
        "last_tenth": last,
        "drift_pct": round(100 * (last - first) / first, 1) if first and last else None,
    }
    return out


def plot(rows: list[dict], workers: list[str], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t = [r["t_s"] / 60 for r in rows]
    fig, (mem, lat) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for name in [*workers, "frontend"]:
        mem.plot(t, [r[f"{name}_rss_mib"] for r in rows], label=name)
    mem.set_ylabel("RSS (MiB)")
    mem.legend()
    mem.set_title("Tandem soak: memory and latency over time")
    lat.plot(t, [r["e2e_p50_s"] for r in rows], label="end-to-end p50")
    lat.plot(t, [r["ttft_p50_s"] for r in rows], label="TTFT p50")
    lat.set_ylabel("seconds")
    lat.set_xlabel("minutes")
    lat.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="runtime/configs/local.yaml")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--sample-s", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="soak-results")
    args = p.parse_args(argv)
    config = load_cluster_config(args.config)
    config = replace(config, server=replace(config.server, grpc_port=0, http_port=0))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with BackgroundServer(config) as server:
        workers = [w.name for w in server.workers]
        rows = asyncio.run(run(server, args))
    fields = sorted(
        {k for r in rows for k in r if k != "errors_by_kind"}, key=lambda k: (k != "t_s", k)
    )
    with open(out / "samples.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows, workers)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    drawn = plot(rows, workers, out / "soak.png")
    print(json.dumps(summary, indent=2))
    print(
        f"wrote {out}/samples.csv, summary.json"
        + (", soak.png" if drawn else " (no matplotlib: no plot)")
    )


if __name__ == "__main__":
    main()
