"""The planner against measured runs: for each configuration of the local cluster, the
planner's predicted figures (the `local` profile, from `tandem calibrate`) beside those a
`bench serve` run measures, and each one's error.

    tandem calibrate                      # writes benchmarks/profiles/local.yaml
    .venv/bin/python benchmarks/validate_planner.py --rate 0.6 [--bench-cmd "..."]

Configurations (`--configs`): `colocated1` (one colocated worker), `colocated2` (two),
`1p1d` (one prefill and one decode worker), each worker one torch thread, admission off
(every request served, as the planner assumes). Each is started in this process from
`--config`'s settings, warmed up, then loaded with the random workload of `--input-len`,
`--output-len`, `--range-ratio`, `--num-prompts` at `--rate` requests/s (Poisson) by
`--bench-cmd`: a command taking vLLM `bench serve`'s flags and writing its JSON (default:
benchmarks/serve.py if present, else vLLM's own benchmark from `--vllm-python`). The
planner then simulates the requests that run sent (their arrival times and lengths). Prints
a markdown table and writes every figure to `--out` (`--measured`: predict again against
the measurements of an earlier run's validation.json, e.g. after calibrating again).
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runtime.cluster import parse_cluster_config  # noqa: E402
from runtime.cluster.background import BackgroundServer  # noqa: E402
from scheduler.planner.model_shape import ModelShape  # noqa: E402
from scheduler.planner.profiles import load_profile  # noqa: E402
from scheduler.planner.search import SLO, Configuration, Planner  # noqa: E402
from scheduler.planner.workload_file import WorkloadSpec  # noqa: E402
from scheduler.simulator import SimRequest  # noqa: E402

VLLM_BENCH = (
    "import argparse, sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "p = argparse.ArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n"
)
POOLS = {
    "colocated1": {"colocated": {"replicas": 1, "num_cpus": 1}},
    "colocated2": {"colocated": {"replicas": 2, "num_cpus": 1}},
    "1p1d": {"prefill": {"replicas": 1, "num_cpus": 1}, "decode": {"replicas": 1, "num_cpus": 1}},
}
FIGURES = ("request_throughput", "median_ttft_ms", "median_tpot_ms", "goodput")


def bench_command(args) -> list[str]:
    if args.bench_cmd:
        return shlex.split(args.bench_cmd)
    serve = REPO / "benchmarks" / "serve.py"
    if serve.is_file():
        return [sys.executable, str(serve)]
    return [args.vllm_python, "-c", VLLM_BENCH, "--save-result"]


def measure(args, name: str, out: Path) -> dict:
    data = yaml.safe_load(Path(args.config).read_text())
    data["pools"] = POOLS[name]
    data["engine"].update(dtype=args.dtype, num_threads=1)
    data["server"].update(grpc_port=0, http_port=0)
    data["scheduler"] = {"ttft_slo_s": None, "tpot_slo_s": None, "max_queued_prompt_tokens": 0}
    config = parse_cluster_config(data)
    result = out / f"{name}.json"
    with BackgroundServer(config) as server:
        with httpx.Client(base_url=server.http_url, timeout=300) as http:  # warm-up
            for _ in range(2 * len(server.workers)):
                body = {"model": config.model_name, "prompt": "Hello " * 100, "max_tokens": 4}
                http.post("/v1/completions", json=body).raise_for_status()
        cmd = bench_command(args) + [
            "--backend", "openai",
            "--base-url", server.http_url,
            "--endpoint", "/v1/completions",
            "--model", config.model_name,
            "--tokenizer", config.model.path,
            "--dataset-name", "random",
            "--random-input-len", str(args.input_len),
            "--random-output-len", str(args.output_len),
            "--random-range-ratio", str(args.range_ratio),
            "--num-prompts", str(args.num_prompts),
            "--request-rate", str(args.rate),
            "--seed", str(args.seed),
            "--ignore-eos",
            "--save-detailed",  # each request's send time and lengths, for the prediction
            "--goodput", f"ttft:{args.slo_ttft_ms}", f"tpot:{args.slo_tpot_ms}",
            "--result-filename", str(result),
        ]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if args.quiet else None)
    ray.shutdown()
    r = json.loads(result.read_text())
    return {
        "request_throughput": r["request_throughput"],
        "median_ttft_ms": r["median_ttft_ms"],
        "median_tpot_ms": r["median_tpot_ms"],
        "goodput": r.get("request_goodput") or 0.0,
        "requests": sent_requests(r),
    }


def sent_requests(result: dict) -> list[list[float]]:
    """[seconds after the first request, prompt tokens, output tokens] of each request a
    `bench serve` result sent, in order of sending."""
    start = min(result["start_times"])
    rows = zip(result["start_times"], result["input_lens"], result["output_lens"])
    return sorted([t - start, n_in, n_out] for t, n_in, n_out in rows)


def sim_requests(sent: list[list[float]]) -> list[SimRequest]:
    """The simulator's requests for what a run sent: its arrival times and lengths, each
    prompt of its own token ids (random prompts share no prefix)."""
    out = []
    for i, (t, n_in, n_out) in enumerate(sent):
        rng = random.Random(i)
        out.append(SimRequest(t, tuple(rng.randrange(1 << 20) for _ in range(int(n_in))), n_out))
    return out


def predict(args, name: str, sent: list[list[float]] | None = None) -> dict:
    """The planner's figures for configuration `name`: on the workload the arguments
    describe, or on the requests a measured run `sent` (its arrivals and lengths), so the
    comparison tests the cost and queueing model rather than two random draws."""
    local = load_profile(args.profile)
    config = {
        "colocated1": Configuration(None, local, 0, 1, 0, 1),
        "colocated2": Configuration(None, local, 0, 2, 0, 1),
        "1p1d": Configuration(local, local, 1, 1, 1, 1),
    }[name]
    workload = WorkloadSpec(
        "validate",
        args.input_len,
        args.output_len,
        args.rate,
        args.range_ratio,
        args.num_prompts,
        seed=args.seed,
    )
    model = parse_cluster_config(yaml.safe_load(Path(args.config).read_text())).model.path
    slo = SLO(args.slo_ttft_ms / 1000, args.slo_tpot_ms / 1000)
    planner = Planner(ModelShape.from_dir(model, 4), workload, slo)
    f = planner.simulate(config, args.rate, sim_requests(sent) if sent else None)
    return {
        "request_throughput": f.request_throughput,
        "median_ttft_ms": 1000 * f.median_ttft_s,
        "median_tpot_ms": 1000 * f.median_tpot_s,
        "goodput": f.goodput,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "runtime" / "configs" / "local.yaml"))
    p.add_argument("--profile", default=str(REPO / "benchmarks" / "profiles" / "local.yaml"))
    p.add_argument("--dtype", default="float32")
    p.add_argument("--configs", nargs="+", default=list(POOLS), choices=list(POOLS))
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--input-len", type=int, default=200)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--range-ratio", type=float, default=0.25)
    p.add_argument("--num-prompts", type=int, default=40)
    p.add_argument("--slo-ttft-ms", type=float, default=2000)
    p.add_argument("--slo-tpot-ms", type=float, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bench-cmd", default=None, help="a `bench serve`-compatible command")
    p.add_argument("--vllm-python", default="/tmp/vv/bin/python")
    p.add_argument("--out", default="validate-results")
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--measured",
        help="a validation.json of an earlier run: predict again against its measurements",
    )
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    earlier = (
        {r["config"]: r["measured"] for r in json.loads(Path(args.measured).read_text())}
        if args.measured
        else {}
    )
    for name in args.configs:
        measured = earlier[name] if name in earlier else measure(args, name, out)
        predicted = predict(args, name, measured.get("requests"))
        rows.append({"config": name, "predicted": predicted, "measured": measured})
        figures = {k: {f: v[f] for f in FIGURES} for k, v in rows[-1].items() if k != "config"}
        print(json.dumps({"config": name, **figures}), flush=True)
    (out / "validation.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))


def table(rows: list[dict]) -> str:
    lines = [
        "configuration | " + " | ".join(f"{f} predicted / measured (error)" for f in FIGURES),
        "|".join(["---"] * (len(FIGURES) + 1)),
    ]
    for r in rows:
        cells = []
        for f in FIGURES:
            pr, me = r["predicted"][f], r["measured"][f]
            err = f"{(pr - me) / me:+.0%}" if me else "-"
            cells.append(f"{pr:.3g} / {me:.3g} ({err})")
        lines.append(f"{r['config']} | " + " | ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
