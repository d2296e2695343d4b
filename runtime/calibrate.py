"""`tandem calibrate`: measure the machine at hand into the `local` hardware profile.

Measures, with the threads of the cluster config's workers: matmul FLOP/s (square matmuls in
the engine's dtype), memory bandwidth (a large tensor copy, bytes read plus written), gRPC
bandwidth (4 MiB messages over loopback, as the KV handoff sends its chunks), and the
engine's own costs for the model: a prefill step's time against its prompt tokens and a
decode step's time against its batch size, each a least-squares line over measured points.
The roofline's efficiencies for other models follow from these: `mfu` is the engine's
prefill FLOP/s over the measured matmul peak, `mbu` its decode step's weight bytes per
second over the measured bandwidth.
"""

from __future__ import annotations

import random
import socket
import statistics
import time
from concurrent import futures
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import grpc
import torch

from runtime.config import EngineConfig
from runtime.engine import Engine, SamplingParams
from scheduler.costs import DecodeCost, PrefillCost
from scheduler.planner.fit import fit
from scheduler.planner.model_shape import ModelShape

PREFILL_POINTS = (64, 128, 256, 512)
DECODE_POINTS = (1, 4, 8, 16, 32)
_METHOD = "/tandem.Calibrate/Echo"
AWS = "https://aws.amazon.com/ec2/pricing/on-demand/)"
# One core (2 vCPUs) of c7i.large, on-demand in us-east-1: what one single-thread worker uses.
CORE_PRICE_PER_HOUR = 0.08925


def timed_steps(engine: Engine, prompts: list[list[int]], max_tokens: int) -> list[float]:
    """Each engine step's seconds while the prompts run to `max_tokens` outputs."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for p in prompts:
        engine.add_request(params=params, prompt_token_ids=p)
    times = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    return times


def engine_costs(
    engine_config: EngineConfig, repeats: int = 3
) -> tuple[PrefillCost, DecodeCost, int, int]:
    """The engine's step costs, its KV bytes per token and its KV blocks."""
    engine = Engine(replace(engine_config, role="colocated"))
    rng = random.Random(0)
    vocab = engine.runner.geometry.vocab_size

    def prompt(n: int) -> list[int]:
        return [rng.randrange(vocab // 4, vocab) for _ in range(n)]

    timed_steps(engine, [prompt(64)], 4)  # warm-up
    prefill = []
    for n in (min(n, engine.max_model_len - 2) for n in PREFILL_POINTS):
        t = statistics.median(timed_steps(engine, [prompt(n)], 1)[0] for _ in range(repeats))
        prefill.append((n, t))
    decode = []
    for b in DECODE_POINTS:
        steps = timed_steps(engine, [prompt(16) for _ in range(b)], 12)
        decode.append((b, statistics.median(steps[2:])))  # past the prompts' step
    p0, p1 = fit(prefill)
    d0, d1 = fit(decode)
    g = engine.runner.geometry
    kv_bytes = 2 * g.num_layers * g.num_kv_heads * g.head_dim * engine.kv.dtype.itemsize
    return (
        PrefillCost(token_s=p1, step_s=p0),
        DecodeCost(step_s=d0, seq_s=d1),
        kv_bytes,
        engine.block_manager.num_blocks,
    )


def matmul_flops(dtype: torch.dtype, n: int = 1024, seconds: float = 1.0) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def memory_bandwidth(num_bytes: int = 128 << 20, repeats: int = 5) -> float:
    src = torch.ones(num_bytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * num_bytes / best


def grpc_bandwidth(message_bytes: int = 4 << 20, count: int = 16) -> float:
    """Bytes per second of `count` messages streamed to a loopback gRPC server."""
    received = []

    def sink(requests, context):
        received.append(sum(len(r) for r in requests))
        return b""

    handler = grpc.method_handlers_generic_handler(
        "tandem.Calibrate", {"Echo": grpc.stream_unary_rpc_method_handler(sink)}
    )
    options = [("grpc.max_receive_message_length", 2 * message_bytes)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=options)
    server.add_generic_rpc_handlers((handler,))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            send = channel.stream_unary(_METHOD)
            payload = bytes(message_bytes)
            send(iter([payload]))  # warm-up: the connection
            seconds = _timed(lambda: send(iter([payload] * count)))
    finally:
        server.stop(None)
    return received[-1] / seconds


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def local_profile_yaml(
    engine_config: EngineConfig, price_per_hour: float = CORE_PRICE_PER_HOUR, log=print
) -> str:
    """Measure this machine and the engine on its config's model; the `local` profile."""
    torch.set_num_threads(engine_config.num_threads or torch.get_num_threads())
    dtype = getattr(torch, engine_config.model.dtype)
    flops = matmul_flops(dtype)
    log(f"matmul: {flops / 1e9:.1f} GFLOP/s ({engine_config.model.dtype})")
    bandwidth = memory_bandwidth()
    log(f"memory: {bandwidth / 1e9:.1f} GB/s")
    network = grpc_bandwidth()
    log(f"gRPC loopback: {network / 1e9:.2f} GB/s")
    prefill, decode, kv_bytes, num_blocks = engine_costs(engine_config)
    log(f"engine: {prefill}, {decode}")
    shape = ModelShape.from_dir(engine_config.model.path, bytes_per_param=dtype.itemsize)
    mfu = min(shape.matmul_flops_per_token() / prefill.token_s / flops, 1.0)
    mbu = min(shape.weight_bytes / decode.step_s / bandwidth, 1.0)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    threads = engine_config.num_threads
    src = f"measured by tandem calibrate, {when}, {threads} thread(s)"
    memory = engine_config.cache.memory_gib * (1 << 30) + shape.weight_bytes
    price = "assumption: --price-per-hour (default: one core of c7i.large on-demand, " + AWS
    s = engine_config.scheduler
    figures = [
        ("peak_flops", f"{flops:.4g}", f"FLOP/s {engine_config.model.dtype} matmul, {src}"),
        ("memory_bandwidth", f"{bandwidth:.4g}", f"bytes/s tensor copy, {src}"),
        ("memory_size", f"{memory:.4g}", "bytes: KV cache (config) + weights, as configured"),
        ("interconnect_bandwidth", f"{network:.4g}", f"bytes/s gRPC loopback, {src}"),
        ("network_bandwidth", f"{network:.4g}", f"bytes/s gRPC loopback, {src}"),
        ("price_per_hour", f"{price_per_hour}", price),
        ("mfu", f"{mfu:.4f}", "measured: the engine's prefill FLOP/s over the matmul peak"),
        ("mbu", f"{mbu:.4f}", "measured: decode weight bytes/s over the copy bandwidth"),
        ("step_overhead_s", f"{prefill.step_s:.4g}", "measured: the prefill line's intercept"),
    ]
    lines = [
        f"# This machine, one worker of {threads} torch thread(s): `tandem calibrate`.",
        "name: local",
        f"description: {socket.gethostname()} ({engine_config.model.dtype})",
        *(f"{k}: {v:<12} # {c}" for k, v, c in figures),
        f"engine:  # the engine's own costs for this model, {src}",
        f"  model: {shape.fingerprint}",
        f"  prefill_token_s: {prefill.token_s:.6g}",
        f"  prefill_step_s: {prefill.step_s:.6g}",
        f"  decode_step_s: {decode.step_s:.6g}",
        f"  decode_seq_s: {decode.seq_s:.6g}",
        f"  kv_bytes_per_token: {kv_bytes}",
        f"  num_blocks: {num_blocks}",
        f"  block_size: {engine_config.cache.block_size}",
        f"  max_num_batched_tokens: {s.max_num_batched_tokens}",
        f"  max_num_seqs: {s.max_num_seqs}",
    ]
    return "\n".join(lines) + "\n"


def write_local_profile(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
