"""Offline throughput of Tandem against Hugging Face transformers and vLLM, on one machine.

    python benchmarks/offline.py --engine tandem --engine hf [--engine vllm] [--json out.json]
    python benchmarks/offline.py --decode-roofline [--engine ...]

Throughput mode: `--num-prompts` random prompts (seeded token ids over the model's vocabulary,
special tokens excluded) of `--input-len` tokens, each generated greedily to exactly
`--output-len` tokens (EOS ignored), all submitted at once. Figures, per engine:
  wall s       time of the one timed generate call over all prompts (after a short warm-up)
  out tok/s    output tokens / wall s          (vLLM's "output token throughput")
  total tok/s  (prompt + output tokens) / wall (vLLM's "total token throughput")
  req/s        prompts / wall s
and the ratio of out tok/s between every pair of engines run together ("tandem/hf = 3.4x").
Absolute figures on shared machines are noise; the ratios, measured in one run, are the result.
"load" is the 1-minute load average as the engine finished: well above the thread count means
other processes shared the cores (with 2 cores, one busy neighbour can halve a figure).

Decode-roofline mode: the machine's memory bandwidth (median of 1 GiB tensor copies, counting
read + write bytes), sampled before every engine and once after the last, then each engine's
single-stream decode speed (batch 1, short prompt, per-token time of the decode phase only:
TPOT = (T(n) - T(1)) / (n - 1)) against the roofline bandwidth / weight bytes: a batch-1
decode step reads every weight once. The shared hosts' bandwidth moves by 2x between minutes
(neighbours' memory traffic), so the roofline takes the highest sample of the run: the
fraction is against the most this machine delivered, never flattered by a slow moment.

Each engine runs in its own subprocess (no shared memory or threads; vLLM's own processes);
an engine that cannot be imported is reported as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("tandem", "hf", "vllm")
OK = "ok"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--engine", action="append", choices=ENGINES, help="repeatable; default: tandem and hf"
    )
    p.add_argument("--model", help="local HF model dir (default: the embedded SmolLM2)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument(
        "--input-len-dist",
        metavar="uniform:LO:HI",
        help="draw each prompt's length uniformly from [LO, HI] instead",
    )
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads for tandem and hf (default: all cores; vLLM binds its own)",
    )
    p.add_argument("--hf-batch-size", type=int, default=0, help="0: all prompts in one batch")
    p.add_argument("--max-num-seqs", type=int, default=256, help="tandem and vllm")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048, help="tandem and vllm")
    p.add_argument("--kv-cache-gib", type=float, default=4.0, help="tandem and vllm")
    p.add_argument("--decode-roofline", action="store_true")
    p.add_argument("--decode-output-len", type=int, default=256)
    p.add_argument("--decode-prompt-len", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="decode-roofline repeats (median)")
    p.add_argument("--json", metavar="PATH", help="write every figure here")
    p.add_argument("--verbose", action="store_true", help="show the engines' own logs")
    return p.parse_args(argv)


def model_facts(model: str, dtype: str) -> tuple[list[int], int]:
    """Token ids a random prompt may use, and the weight bytes in `dtype` (tied ones once)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model)
    tok = AutoTokenizer.from_pretrained(model)
    special = set(tok.all_special_ids) | {
        i for i, t in tok.added_tokens_decoder.items() if t.special
    }
    allowed = [i for i in range(min(config.vocab_size, len(tok))) if i not in special]
    with torch.device("meta"):  # shapes only; parameters() yields a tied tensor once
        meta = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    weight_bytes = sum(p.numel() * p.element_size() for p in meta.parameters())
    return allowed, weight_bytes


def make_prompts(rng: random.Random, allowed: list[int], n: int, lengths: str | int):
    def length() -> int:
        if isinstance(lengths, int):
            return lengths
        kind, lo, hi = lengths.split(":")
        if kind != "uniform":
            raise SystemExit(f"unknown --input-len-dist {lengths!r}; use uniform:LO:HI")
        return rng.randint(int(lo), int(hi))

    return [[rng.choice(allowed) for _ in range(length())] for _ in range(n)]


def copy_bandwidth(num_bytes: int, repeats: int = 7) -> float:
    """GB/s of `dst.copy_(src)` over `num_bytes` tensors, counting read + write bytes (median)."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    src = torch.ones(num_bytes, dtype=torch.uint8)
    dst = torch.zeros_like(src)  # both touched, so page faults stay out of the timings
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * num_bytes / statistics.median(times[1:]) / 1e9


def run_engine(name: str, spec: dict, verbose: bool) -> dict:
    """Runs benchmarks/_engines.py for one engine in a subprocess; returns its result."""
    with tempfile.TemporaryDirectory(prefix=f"tandem-bench-{name}-") as tmp:
        spec_path, result_path, log_path = (Path(tmp) / f for f in ("spec", "result", "log"))
        spec_path.write_text(json.dumps({**spec, "engine": name}))
        cmd = [
            sys.executable,
            str(REPO / "benchmarks" / "_engines.py"),
            str(spec_path),
            str(result_path),
        ]
        with open(log_path, "w") as log:
            out = None if verbose else log
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT if out else None)
        if result_path.exists():
            return json.loads(result_path.read_text())
        tail = "" if verbose else "".join(log_path.read_text().splitlines(True)[-15:])
        return {"status": "failed", "reason": f"exit code {proc.returncode}\n{tail}"}


def ratios(results: dict, key: str) -> dict:
    """`a/b` for every pair, `a` named before `b` on the command line."""
    ok = [e for e, r in results.items() if r["status"] == OK]
    return {
        f"{a}/{b}": results[a][key] / results[b][key] for i, a in enumerate(ok) for b in ok[i + 1 :]
    }


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        )


def report_status(results: dict) -> None:
    for name, r in results.items():
        if r["status"] != OK:
            print(f"{name}: {r['status']}: {r['reason'].strip()}")


def throughput(args, results: dict) -> dict:
    for r in results.values():
        if r["status"] == OK:
            r["output_tok_s"] = r["num_output_tokens"] / r["wall_s"]
            r["total_tok_s"] = (r["num_prompt_tokens"] + r["num_output_tokens"]) / r["wall_s"]
            r["req_s"] = args.num_prompts / r["wall_s"]
    rows = [
        [
            n,
            f"{r['wall_s']:.2f}",
            f"{r['output_tok_s']:.1f}",
            f"{r['total_tok_s']:.1f}",
            f"{r['req_s']:.2f}",
            str(r["num_output_tokens"]),
            f"{r['load_avg_1m']:.1f}",
        ]
        for n, r in results.items()
        if r["status"] == OK
    ]
    print_table(
        ["engine", "wall s", "out tok/s", "total tok/s", "req/s", "out tokens", "load"], rows
    )
    report_status(results)
    return ratios(results, "output_tok_s")


def decode_roofline(results: dict, weight_bytes: int, samples: list[float]) -> dict:
    samples = samples + [copy_bandwidth(1 << 30)]
    dram = max(samples)
    cached = copy_bandwidth(weight_bytes // 2)  # src + dst together as large as the weights
    roofline = dram * 1e9 / weight_bytes
    print(
        f"memory bandwidth (1 GiB copy, read+write), {len(samples)} samples over the run: "
        f"{' '.join(f'{b:.1f}' for b in samples)} GB/s, highest {dram:.1f}; with a working "
        f"set the size of the weights ({weight_bytes / 1e6:.0f} MB): {cached:.1f} GB/s"
    )
    print(f"roofline: {dram:.1f} GB/s / {weight_bytes / 1e6:.0f} MB = {roofline:.1f} tok/s\n")
    rows = []
    for name, r in results.items():
        if r["status"] == OK:
            r["roofline_fraction"] = r["decode_tok_s"] / roofline
            rows.append(
                [
                    name,
                    f"{r['first_token_s'] * 1e3:.1f}",
                    f"{r['tpot_s'] * 1e3:.2f}",
                    f"{r['decode_tok_s']:.1f}",
                    f"{r['roofline_fraction']:.0%}",
                    f"{r['load_avg_1m']:.1f}",
                ]
            )
    print_table(["engine", "T(1) ms", "TPOT ms", "decode tok/s", "of roofline", "load"], rows)
    report_status(results)
    return {
        "bandwidth_gb_s": dram,
        "bandwidth_samples_gb_s": samples,
        "weight_set_bandwidth_gb_s": cached,
        "weight_bytes": weight_bytes,
        "roofline_tok_s": roofline,
        "ratios": ratios(results, "decode_tok_s"),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from runtime.model_store import resolve_model

    args.model = str(resolve_model(args.model))
    engines = list(dict.fromkeys(args.engine or ["tandem", "hf"]))
    allowed, weight_bytes = model_facts(args.model, args.dtype)
    rng = random.Random(args.seed)
    spec = {
        "model": args.model,
        "dtype": args.dtype,
        "hf_batch_size": args.hf_batch_size,
        "threads": args.threads,
        "max_num_seqs": args.max_num_seqs,
        "kv_cache_gib": args.kv_cache_gib,
        "max_num_batched_tokens": args.max_num_batched_tokens,
    }
    if args.decode_roofline:
        spec.update(
            mode="decode",
            output_len=args.decode_output_len,
            prompts=make_prompts(rng, allowed, 2 * args.repeats, args.decode_prompt_len),
            warmup_prompts=make_prompts(rng, allowed, 1, args.decode_prompt_len),
            warmup_output_len=16,
        )
    else:
        spec.update(
            mode="throughput",
            output_len=args.output_len,
            prompts=make_prompts(
                rng, allowed, args.num_prompts, args.input_len_dist or args.input_len
            ),
            warmup_prompts=make_prompts(rng, allowed, min(4, args.num_prompts), args.input_len),
            warmup_output_len=min(8, args.output_len),
        )
    print(
        f"model {args.model} ({args.dtype}), {len(os.sched_getaffinity(0))} cores; "
        + (
            "decode roofline"
            if args.decode_roofline
            else f"{args.num_prompts} prompts x {args.input_len_dist or args.input_len} in, "
            f"{args.output_len} out"
        )
    )
    results, bandwidth = {}, []
    for name in engines:
        if args.decode_roofline:
            bandwidth.append(copy_bandwidth(1 << 30))
        print(f"running {name} ...", flush=True)
        results[name] = run_engine(name, spec, args.verbose)
        # Other processes on these shared hosts skew timings; the load average flags it.
        results[name]["load_avg_1m"] = os.getloadavg()[0]
    print()
    if args.decode_roofline:
        summary = decode_roofline(results, weight_bytes, bandwidth)
        pairs = summary["ratios"]
    else:
        pairs = throughput(args, results)
        summary = {"ratios": pairs}
        for name, r in results.items():
            if r["status"] == OK and r["output_lens"] != [args.output_len]:
                print(f"WARNING: {name} produced output lengths {r['output_lens']}")
    for pair, value in pairs.items():
        print(f"{pair} = {value:.2f}x")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "cores": len(os.sched_getaffinity(0)),
                    "results": results,
                    **summary,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
