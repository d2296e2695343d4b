"""A roofline cost model of one worker (a model on `tp` devices of one profile): the
simulator's prefill and decode step costs, its KV capacity, and the handoff between two.

Prefill is compute-bound: a prompt token costs its matmul FLOPs plus its attention over half
the mean prompt (causal), at `mfu` of peak. Decode is memory-bound: a step reads the weights
once, each sequence its KV (the mean context), at `mbu` of the bandwidth, plus each
sequence's FLOPs. Tensor parallelism divides both by `tp` (its all-reduces are not
modelled). A colocated step that mixes both pays both (the simulator sums them): the
interference disaggregation removes. Where the profile carries the engine's measured costs
for this very model (`tandem calibrate`), those are used instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.costs import DecodeCost, PrefillCost, TransferCost
from scheduler.planner.model_shape import ModelShape
from scheduler.planner.profiles import HardwareProfile
from scheduler.planner.workload_file import WorkloadSpec

MEMORY_UTILIZATION = 0.9  # of device memory for weights + KV, as vLLM's default
HANDOFF_LATENCY_S = 0.002  # per handoff beyond its bytes (a gRPC round trip and setup)


@dataclass(frozen=True)
class WorkerCosts:
    prefill: PrefillCost
    decode: DecodeCost
    num_blocks: int
    block_size: int
    tp: int
    kv_bytes_per_token: int


def min_tp(shape: ModelShape, profile: HardwareProfile, max_tp: int = 8) -> int | None:
    """The fewest devices (a power of two) whose memory holds the weights with at least a
    quarter of it left for KV; None if `max_tp` do not."""
    tp = 1
    while tp <= max_tp:
        if shape.weight_bytes <= 0.75 * MEMORY_UTILIZATION * tp * profile.memory_size:
            return tp
        tp *= 2
    return None


def worker_costs(
    shape: ModelShape,
    profile: HardwareProfile,
    workload: WorkloadSpec,
    tp: int = 1,
    block_size: int = 16,
) -> WorkerCosts:
    measured = profile.engine
    if measured is not None and measured.model == shape.fingerprint and tp == 1:
        return WorkerCosts(
            PrefillCost(token_s=measured.prefill_token_s, step_s=measured.prefill_step_s),
            DecodeCost(step_s=measured.decode_step_s, seq_s=measured.decode_seq_s),
            measured.num_blocks,
            measured.block_size,
            1,
            measured.kv_bytes_per_token,
        )
    flops = profile.peak_flops * profile.mfu * tp
    bandwidth = profile.memory_bandwidth * profile.mbu * tp
    matmul = shape.matmul_flops_per_token()
    prefill = PrefillCost(
        token_s=(matmul + shape.attention_flops_per_token(workload.input_len / 2)) / flops,
        step_s=profile.step_overhead_s,
    )
    context = workload.mean_context
    decode = DecodeCost(
        step_s=profile.step_overhead_s + shape.weight_bytes / bandwidth,
        seq_s=shape.kv_bytes_per_token * context / bandwidth
        + (matmul + shape.attention_flops_per_token(context)) / flops,
    )
    kv_bytes = MEMORY_UTILIZATION * tp * profile.memory_size - shape.weight_bytes
    num_blocks = max(int(kv_bytes // (shape.kv_bytes_per_token * block_size)), 0)
    return WorkerCosts(prefill, decode, num_blocks, block_size, tp, shape.kv_bytes_per_token)


def handoff_cost(
    prefill: HardwareProfile, decode: HardwareProfile, kv_bytes_per_token: int, tp: int = 1
) -> TransferCost:
    """Devices of one profile hand off over their interconnect (one node); of two, over the
    slower side's network. Each of the `tp` devices sends its share of the KV."""
    if prefill.name == decode.name:
        bandwidth = prefill.interconnect_bandwidth
    else:
        bandwidth = min(prefill.network_bandwidth, decode.network_bandwidth)
    return TransferCost(kv_bytes_per_token, bandwidth * tp, latency_s=HANDOFF_LATENCY_S)
