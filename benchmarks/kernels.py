"""Kernel benchmarks against the device's measured peak, and the GPU engine against transformers.

    .venv/bin/python benchmarks/kernels.py [--quick] [--no-engine] [--batch 64] [--json OUT]

Per kernel and size: median time, achieved GB/s (every kernel here is memory-bound; decode
attention also gets TFLOP/s), the fraction of the peak measured in this same run (a
device-to-device copy counting read + write bytes; a large matmul for FLOP/s), and the speed-up
of the Triton kernel over its torch reference on the same device. Then, on a GPU, the engine
(SmolLM2, bfloat16, CUDA graphs) at `--batch` sequences: decode step time and tokens/s, and
the same generation through transformers' `generate` on the same GPU.

On a CPU-only host the fast column is the C++ CPU kernels (kernels/cpu, bfloat16) against the
same torch references, for the ops that have one (decode and prefill attention, RMSNorm,
rotary, SiLU*up, the small-batch GEMV, int8/fp8 KV quantization, KV pack/unpack); the Triton
and engine figures need CUDA. Targets on an H100/H200: decode
attention >= 70% of copy bandwidth at batch 64 with 2k-token contexts, pack/unpack >= 80%,
engine decode >= 5x transformers' throughput at batch 64.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels.activation import silu_mul  # noqa: E402
from kernels.attention import causal_attention, paged_decode_attention  # noqa: E402
from kernels.backend import cpu_kernels  # noqa: E402
from kernels.kv_pack import pack_kv, unpack_kv  # noqa: E402
from kernels.kv_quant import dequantize_kv, quantize_kv  # noqa: E402
from kernels.linear import linear_small_batch  # noqa: E402
from kernels.norm import fused_add_rms_norm  # noqa: E402
from kernels.rotary import apply_rotary_  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
FAST = "triton" if CUDA else "cpu"  # the backend timed against the torch reference
CPU_KERNELS = {
    "decode_attention",
    "prefill_attention",
    "fused_add_rms_norm",
    "rotary",
    "silu_mul",
    "linear_small_batch",
    "quantize_int8",
    "dequantize_int8",
    "quantize_fp8",
    "dequantize_fp8",
    "pack_kv",
    "unpack_kv",
}


def bench(fn, repeats: int = 20) -> float:
    """Median seconds of fn() (after a warm-up); on CUDA through triton's do_bench, which
    flushes the L2 cache between runs so bandwidth figures are not cache hits."""
    if CUDA:
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peaks(quick: bool) -> dict:
    n = (1 << 28 if quick else 1 << 30) if CUDA else 1 << 26
    src = torch.ones(n, dtype=torch.uint8, device=DEV)
    dst = torch.zeros_like(src)
    copy_gbs = 2 * n / bench(lambda: dst.copy_(src)) / 1e9
    m = 8192 if CUDA else 1024
    dtype = torch.bfloat16
    a, b = (torch.randn(m, m, device=DEV).to(dtype) for _ in range(2))
    tflops = 2 * m**3 / bench(lambda: a @ b, repeats=5) / 1e12
    return {"copy_GBps": copy_gbs, "matmul_TFLOPs": tflops, "matmul_dtype": str(dtype)}


def cases(quick: bool):
    """(kernel, size label, bytes moved, flops, fn(backend))."""
    dt = torch.bfloat16
    r = lambda *s: torch.randn(*s, device=DEV).to(dt)  # noqa: E731
    shapes = [("smollm2", 9, 3, 64), ("llama8b", 32, 8, 128)]
    batches = [(1, 2048), (64, 2048), (64, 512)] if CUDA else [(8, 512)]
    for name, h, kvh, d in shapes[:1] if quick else shapes:
        for b, ctx in batches[:2] if quick else batches:
            bs, nb = 16, b * ctx // 16
            q, k, v = r(b, h, d), r(nb, bs, kvh, d), r(nb, bs, kvh, d)
            tables = torch.randperm(nb, device=DEV).view(b, -1)
            lens = torch.full((b,), ctx, device=DEV)
            nbytes = 2 * b * ctx * kvh * d * k.element_size() + 2 * q.numel() * q.element_size()
            yield (
                "decode_attention",
                f"{name} b={b} ctx={ctx}",
                nbytes,
                4 * b * h * ctx * d,
                lambda be, a=(q, k, v, tables, lens, d**-0.5): paged_decode_attention(
                    *a, backend=be
                ),
            )
    for name, h, kvh, d in shapes[:1] if quick else shapes:
        t = 1024 if CUDA else 256
        q, k, v = r(t, h, d), r(t, kvh, d), r(t, kvh, d)
        nbytes = (2 * q.numel() + 2 * k.numel()) * q.element_size()
        yield (
            "prefill_attention",
            f"{name} {t} tok causal",
            nbytes,
            2 * h * t * t * d,
            lambda be, a=(q, k, v, d**-0.5): causal_attention(*a, backend=be),
        )
    tokens = 2048 if CUDA else 512
    for name, kvh, d in [("smollm2", 3, 64), ("llama8b", 8, 128)][: 1 if quick else 2]:
        cache = r(2, tokens // 16 + 8, 16, kvh, d)
        table = torch.randperm(cache.shape[1])[: tokens // 16]
        packed = pack_kv(cache, table, 0, tokens, backend="torch")
        nbytes = 2 * packed.numel() * packed.element_size()
        yield (
            "pack_kv",
            f"{name} {tokens} tok",
            nbytes,
            0,
            lambda be, c=cache, t=table, n=tokens: pack_kv(c, t, 0, n, backend=be),
        )
        yield (
            "unpack_kv",
            f"{name} {tokens} tok",
            nbytes,
            0,
            lambda be, c=cache, t=table, p=packed: unpack_kv(c, t, p, 0, backend=be),
        )
        x = packed.view(-1, kvh, d)
        for enc in ("int8", "fp8"):
            qx, s = quantize_kv(x, enc, 16, backend="torch")
            qbytes = x.numel() * (x.element_size() + 1) + s.numel() * 4
            yield (
                f"quantize_{enc}",
                f"{name} {tokens} tok",
                qbytes,
                0,
                lambda be, x=x, e=enc: quantize_kv(x, e, 16, backend=be),
            )
            yield (
                f"dequantize_{enc}",
                f"{name} {tokens} tok",
                qbytes,
                0,
                lambda be, q=qx, s=s, e=enc, dt=dt: dequantize_kv(q, s, e, 16, dt, backend=be),
            )
    for rows, hidden in [(64, 576), (4096, 4096)][: 1 if quick else 2]:
        x, res, w = r(rows, hidden), r(rows, hidden), r(hidden)
        yield (
            "fused_add_rms_norm",
            f"{rows}x{hidden}",
            4 * x.numel() * x.element_size(),
            0,
            lambda be, a=(x, res, w): fused_add_rms_norm(*a, 1e-6, backend=be),
        )
    for t, heads, d in [(64, 12, 64), (4096, 40, 128)][: 1 if quick else 2]:
        qk, cos, sin = r(t, heads, d), r(t, 1, d), r(t, 1, d)
        nbytes = (2 * qk.numel() + 2 * cos.numel()) * qk.element_size()
        yield (
            "rotary",
            f"{t}x{heads}x{d}",
            nbytes,
            0,
            lambda be, a=(qk, cos, sin): apply_rotary_(*a, backend=be),
        )
    for rows, inter in [(32, 1536), (2048, 1536)][: 1 if quick else 2]:
        gate_up = r(rows, 2 * inter)
        yield (
            "silu_mul",
            f"{rows}x{inter}",
            3 * rows * inter * 2,
            0,
            lambda be, x=gate_up: silu_mul(x, backend=be),
        )
    for m, n, k in [(1, 3072, 576), (4, 49152, 576)][: 1 if quick else 2]:
        x, w = r(m, k), r(n, k)
        yield (
            "linear_small_batch",
            f"{m}x{k} @ {n}x{k}",
            w.numel() * 2,
            2 * m * n * k,
            lambda be, a=(x, w): linear_small_batch(*a, backend=be),
        )


def kernel_table(peak: dict, quick: bool) -> list[dict]:
    """Per case: the torch reference, and the fast backend where the op has one here."""
    rows = []
    for kernel, size, nbytes, flops, fn in cases(quick):
        ref = bench(lambda: fn("torch"))
        row = {
            "kernel": kernel,
            "size": size,
            "torch_us": ref * 1e6,
            "torch_GBps": nbytes / ref / 1e9,
        }
        cells = [f"{kernel:<20}", f"{size:<26}", f"{row['torch_us']:>10.1f}"]
        if CUDA or (kernel in CPU_KERNELS and cpu_kernels() is not None):
            fast = bench(lambda: fn(FAST))
            row.update(
                fast_backend=FAST,
                fast_us=fast * 1e6,
                fast_GBps=nbytes / fast / 1e9,
                peak_frac=nbytes / fast / 1e9 / peak["copy_GBps"],
                speedup=ref / fast,
            )
            if flops:
                row["fast_TFLOPs"] = flops / fast / 1e12
            cells += [
                f"{row['fast_us']:>10.1f}",
                f"{row['fast_GBps']:>8.1f}",
                f"{row['peak_frac']:>6.0%}",
                f"{row['speedup']:>6.2f}x",
            ]
            if flops:
                cells.append(f"{flops / fast / 1e12:>6.2f} TFLOP/s")
        else:
            row["peak_frac"] = row["torch_GBps"] / peak["copy_GBps"]
            cells += [
                f"{'-':>10}",
                f"{row['torch_GBps']:>8.1f}",
                f"{row['peak_frac']:>6.0%}",
                f"{'-':>7}",
            ]
        rows.append(row)
        print("  ".join(cells), flush=True)
    return rows


def engine_bench(batch: int, prompt_len: int, new_tokens: int, model: str | None) -> dict:
    """SmolLM2 bf16 on the GPU (or the model directory given): Tandem (CUDA graphs) against
    transformers' generate on the same weights."""
    from transformers import AutoModelForCausalLM

    from runtime.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
    from runtime.engine import Engine, SamplingParams
    from runtime.model_store import fetch_default_model

    path = model or str(fetch_default_model())
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(100, 10000, (batch, prompt_len), generator=g)
    eng = Engine(
        EngineConfig(
            model=ModelConfig(path=path, dtype="bfloat16", device="cuda"),
            cache=CacheConfig(block_size=16, memory_gib=8.0),
            scheduler=SchedulerConfig(max_num_seqs=batch, max_num_batched_tokens=8192),
        )
    )
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    warm = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    eng.generate(prompt_token_ids=prompts[:, :8].tolist(), params=warm)  # capture, warm up
    for p in prompts.tolist():
        eng.add_request(params=params, prompt_token_ids=p)
    steps, t0 = [], time.perf_counter()
    while eng.has_unfinished_requests():
        s0 = time.perf_counter()
        outs = eng.step()
        if all(len(o.token_ids) > 1 for o in outs) and len(outs) == batch:
            steps.append(time.perf_counter() - s0)  # decode-only steps of the full batch
    tandem_s = time.perf_counter() - t0
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    hf.generation_config.pad_token_id = 0
    ids = prompts.cuda()
    hf.generate(ids[:, :8], max_new_tokens=8, min_new_tokens=8, do_sample=False)  # warm up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    torch.cuda.synchronize()
    hf_s = time.perf_counter() - t0
    step = statistics.median(steps)
    out = {
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "tandem_decode_step_ms": step * 1e3,
        "tandem_decode_tok_s": batch / step,
        "tandem_tok_s": batch * new_tokens / tandem_s,
        "hf_tok_s": batch * new_tokens / hf_s,
    }
    out["speedup_vs_hf"] = out["tandem_tok_s"] / out["hf_tok_s"]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer and smaller sizes")
    p.add_argument("--no-engine", action="store_true", help="kernels only")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument(
        "--model",
        metavar="DIR",
        help="weights for the engine figures (default: "
        "SmolLM2); timings depend only on the shapes, so a random-weight copy of "
        "the config serves where the weights cannot travel",
    )
    p.add_argument("--json", metavar="PATH", help="write every figure here")
    args = p.parse_args(argv)
    device = torch.cuda.get_device_name() if CUDA else f"CPU ({torch.get_num_threads()} threads)"
    peak = peaks(args.quick)
    print(
        f"device: {device}\npeak: copy {peak['copy_GBps']:.0f} GB/s, matmul "
        f"{peak['matmul_TFLOPs']:.1f} TFLOP/s ({peak['matmul_dtype']})"
    )
    if not CUDA:
        print(
            "no CUDA: the C++ CPU kernels against the torch references; the Triton kernels "
            "and the engine need a GPU"
        )
    head = [
        f"{'kernel':<20}",
        f"{'size':<26}",
        f"{'torch us':>10}",
        f"{FAST + ' us':>10}",
        f"{'GB/s':>8}",
        f"{'peak':>6}",
        f"{'speedup':>7}",
    ]
    print("  ".join(head))
    result = {"device": device, "peak": peak, "kernels": kernel_table(peak, args.quick)}
    if CUDA and not args.no_engine:
        e = engine_bench(args.batch, args.prompt_len, args.new_tokens, args.model)
        result["engine"] = e
        print(
            f"engine (SmolLM2 bf16, batch {e['batch']}): decode step "
            f"{e['tandem_decode_step_ms']:.2f} ms = {e['tandem_decode_tok_s']:.0f} tok/s; "
            f"end to end {e['tandem_tok_s']:.0f} tok/s vs transformers generate "
            f"{e['hf_tok_s']:.0f} tok/s: {e['speedup_vs_hf']:.1f}x"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
