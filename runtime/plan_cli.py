"""`tandem plan` and `tandem calibrate`: the planner's command line.

    tandem plan --model DIR --workload FILE --slo ttft=MS,tpot=MS --profiles a100-80gb,l4,...

prints the configurations ranked by cost per million tokens at their goodput, and plots them.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from runtime.model_store import ModelFetchError, fetch_default_model
from scheduler.planner.model_shape import ModelShape
from scheduler.planner.profiles import load_profiles
from scheduler.planner.search import RATIOS, SLO, Planner, Prediction
from scheduler.planner.workload_file import load_workload

PROFILES_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "profiles"


def parse_slo(text: str, attainment: float) -> SLO:
    """`ttft=MS,tpot=MS` as an SLO; ValueError says what to write."""
    try:
        parts = dict(p.split("=", 1) for p in text.split(","))
        return SLO(float(parts["ttft"]) / 1000, float(parts["tpot"]) / 1000, attainment)
    except (ValueError, KeyError):
        raise ValueError(f"--slo {text!r}: expected ttft=MS,tpot=MS, e.g. ttft=1000,tpot=100")


def parse_ratios(text: str) -> tuple[tuple[int, int], ...]:
    try:
        ratios = tuple(tuple(int(n) for n in r.split(":")) for r in text.split(","))
    except ValueError:
        ratios = ((0,),)
    if not all(len(r) == 2 and min(r) >= 1 for r in ratios):
        raise ValueError(f"--ratios {text!r}: expected P:D pairs of counts >= 1, e.g. 1:1,2:1")
    return ratios  # type: ignore[return-value]


def table(predictions: list[Prediction], rate: float) -> str:
    head = (
        "rank | configuration | devices | goodput req/s | per device | $/h | $/Mtok | "
        f"replicas for {rate:g} req/s | TTFT p50 ms | TPOT p50 ms | attainment"
    )
    rows = [head, "|".join(["---"] * 11)]
    for i, p in enumerate(predictions, 1):
        rows.append(
            f"{i} | {p.config.label} | {p.config.devices} | {p.goodput:.2f} | "
            f"{p.goodput_per_device:.2f} | {p.config.price_per_hour:.2f} | "
            f"{p.cost_per_mtok:.3f} | {p.replicas} | {1000 * p.median_ttft_s:.0f} | "
            f"{1000 * p.median_tpot_s:.1f} | {p.attainment:.0%}"
        )
    return "\n".join(rows)


def plot(predictions: list[Prediction], path: Path, title: str) -> None:
    """Cost per million tokens of each configuration (colocated and disaggregated in two
    colours), its goodput per device beside the bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [p for p in predictions if p.goodput > 0][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(shown) + 1.5))
    colors = ["tab:orange" if p.config.colocated else "tab:blue" for p in shown]
    ax.barh([p.config.label for p in shown], [p.cost_per_mtok for p in shown], color=colors)
    for i, p in enumerate(shown):
        ax.text(p.cost_per_mtok, i, f" {p.goodput_per_device:.2f} req/s/dev", va="center")
    ax.set_xlabel("USD per million tokens at goodput (orange: colocated, blue: P:D)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        model_dir = Path(args.model) if args.model else fetch_default_model()
        shape = ModelShape.from_dir(model_dir)
        workload = load_workload(args.workload)
        slo = parse_slo(args.slo, args.attainment)
        profiles = load_profiles(args.profiles.split(","), args.profiles_dir)
        ratios = parse_ratios(args.ratios)
    except (ValueError, OSError, ModelFetchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    planner = Planner(shape, workload, slo, args.max_num_batched_tokens, args.max_num_seqs)
    configs = planner.configurations(profiles, ratios)
    if not configs:
        print(f"error: no profile of {args.profiles} holds {model_dir}", file=sys.stderr)
        return 2
    ranked = planner.rank(configs)
    title = (
        f"{model_dir.name} on {workload.name} ({workload.input_len} in, {workload.output_len} "
        f"out); SLO TTFT {slo.ttft_s * 1000:g} ms, TPOT {slo.tpot_s * 1000:g} ms at "
        f"{slo.attainment:.0%}"
    )
    print(title)
    print(table(ranked[: args.top], workload.rate))
    if args.plot:
        plot(ranked[: args.top], Path(args.plot), title)
        print(f"plot: {args.plot}")
    if args.json:
        rows = [
            {**asdict(p), "config": p.config.label, "devices": p.config.devices} for p in ranked
        ]
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from runtime.calibrate import local_profile_yaml, write_local_profile
    from runtime.cluster import load_cluster_config

    try:
        cluster = load_cluster_config(
            args.config, model=args.model, overrides={"engine": {"dtype": args.dtype}}
        )
        price = {} if args.price_per_hour is None else {"price_per_hour": args.price_per_hour}
        text = local_profile_yaml(cluster.engine_config(args.role), **price)
    except (ValueError, OSError, ModelFetchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {write_local_profile(args.out, text)}")
    return 0


def add_planner_parsers(sub) -> None:
    plan = sub.add_parser("plan", help="predict and rank serving configurations")
    plan.add_argument(
        "--model",
        default=None,
        help="a Hugging Face model directory "
        "(config.json is enough; default: SmolLM2-135M-Instruct)",
    )
    plan.add_argument("--workload", required=True, help="a workload YAML file")
    plan.add_argument("--slo", required=True, help="ttft=MS,tpot=MS")
    plan.add_argument("--attainment", type=float, default=0.9, help="share within the SLO")
    plan.add_argument("--profiles", required=True, help="profile names or paths, comma-separated")
    plan.add_argument("--profiles-dir", default=str(PROFILES_DIR))
    plan.add_argument(
        "--ratios",
        default=",".join(f"{p}:{d}" for p, d in RATIOS),
        help="prefill:decode worker ratios to try",
    )
    plan.add_argument("--max-num-batched-tokens", type=int, default=2048)
    plan.add_argument("--max-num-seqs", type=int, default=256)
    plan.add_argument("--top", type=int, default=20, help="rows to print and plot")
    plan.add_argument("--plot", default=None, help="write the ranked plot here (PNG)")
    plan.add_argument("--json", default=None, help="write every prediction here")
    plan.set_defaults(func=cmd_plan)

    cal = sub.add_parser("calibrate", help="measure this machine into the local profile")
    cal.add_argument("--config", default="runtime/configs/local.yaml")
    cal.add_argument("--model", default=None)
    cal.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    cal.add_argument("--role", default="decode", help="whose pool's engine settings to use")
    cal.add_argument(
        "--price-per-hour",
        type=float,
        default=None,
        help="USD per worker-hour (default: one c7i.large core)",
    )
    cal.add_argument("--out", default=str(PROFILES_DIR / "local.yaml"))
    cal.set_defaults(func=cmd_calibrate)
