"""The simulator: exact timings for one request, and the scheduler's policies under load."""

import random
from dataclasses import replace

import pytest

from scheduler import SchedulerConfig
from scheduler.costs import DecodeCost, PrefillCost, TransferCost, WorkerSpec
from scheduler.simulator import SimRequest, Simulator
from scheduler.workload import gamma_arrivals, summarize

PREFILL = PrefillCost(token_s=0.001, step_s=0.01)  # 1,000 tokens/s
DECODE = DecodeCost(step_s=0.02, seq_s=0.001)


def pair(decode_blocks: int = 4096) -> list[WorkerSpec]:
    return [
        WorkerSpec("p0", "prefill", prefill=PREFILL),
        WorkerSpec("d0", "decode", decode=DECODE, num_blocks=decode_blocks),
    ]


def workload(rate, n=300, prompt=400, output=32, burstiness=1.0, seed=0):
    return [
        SimRequest(t, tuple((i * 7 + j) % 1000 for j in range(prompt)), output)
        for i, t in enumerate(gamma_arrivals(rate, n, burstiness, seed))
    ]


def test_one_request_takes_prefill_handoff_and_decode_steps_exactly():
    transfer = TransferCost(bytes_per_token=1000, bytes_per_s=1e6, latency_s=0.005)
    (req,) = Simulator(pair(), transfer=transfer).run([SimRequest(1.0, tuple(range(100)), 5)])
    assert req.ttft_s == pytest.approx(0.01 + 100 * 0.001)
    handoff = 0.005 + 100 * 1000 / 1e6
    assert req.finish_s == pytest.approx(1.0 + 0.11 + handoff + 4 * 0.021)
    assert req.tpot_s == pytest.approx((handoff + 4 * 0.021) / 4)
    assert (req.prefill_worker, req.decode_worker) == ("p0", "d0")


def test_long_prompts_are_chunked_and_colocated_steps_mix_both():
    colocated = [WorkerSpec("c0", "colocated", PREFILL, DECODE, max_num_batched_tokens=64)]
    (req,) = Simulator(colocated).run([SimRequest(0.0, tuple(range(200)), 3)])
    assert req.ttft_s == pytest.approx(4 * 0.01 + 200 * 0.001)  # 64 + 64 + 64 + 8
    assert req.tpot_s == pytest.approx(0.021)


def test_admission_keeps_goodput_at_overload_where_queueing_everything_collapses():
    capacity = 1000 / 410  # req/s: prompts of 400 tokens at 1,000 tokens/s, a step each
    slo = dict(ttft_slo_s=2.0, tpot_slo_s=0.1)
    sustained = summarize(Simulator(pair()).run(workload(0.6 * capacity)), **slo)
    admitted = summarize(
        Simulator(pair(), SchedulerConfig(ttft_slo_s=1.5)).run(workload(1.5 * capacity)), **slo
    )
    unbounded = summarize(
        Simulator(pair(), SchedulerConfig(max_queued_prompt_tokens=0)).run(
            workload(1.5 * capacity)
        ),
        **slo,
    )
    assert sustained.refused == 0
    assert admitted.refused > 0 and admitted.p99_ttft_s <= 2.0
    assert admitted.goodput >= 0.85 * sustained.goodput
    assert unbounded.refused == 0 and unbounded.goodput < 0.5 * sustained.goodput


def test_tpot_admission_keeps_decode_heavy_overload_within_the_slo():
    # Long outputs on a decode worker stepping 0.02 s + 0.004 s a sequence: at 0.1 s a
    # token it holds 20 sequences, ~1 req/s of 200-token outputs. At 1.5 req/s, admitting
    # everything fills the batch to 64 (0.276 s a token); the TPOT target refuses instead.
    slow = [
        WorkerSpec("p0", "prefill", prefill=PREFILL),
        WorkerSpec("d0", "decode", decode=DecodeCost(step_s=0.02, seq_s=0.004)),
    ]
    slo = dict(ttft_slo_s=2.0, tpot_slo_s=0.1)

    def run(rate, config):
        return summarize(Simulator(slow, config).run(workload(rate, prompt=100, output=200)), **slo)

    sustained = run(0.6, SchedulerConfig())
    admitted = run(1.5, SchedulerConfig(**slo))
    unbounded = run(1.5, SchedulerConfig(ttft_slo_s=2.0))
    assert sustained.refused == 0 and sustained.p99_tpot_s <= 0.1
    assert admitted.refused > 0 and admitted.p99_tpot_s <= 0.1
    assert admitted.goodput >= 0.85 * sustained.goodput
    assert unbounded.refused == 0 and unbounded.goodput < 0.2 * sustained.goodput


def test_a_full_decode_side_makes_handoffs_wait_and_every_request_completes():
    reqs = Simulator(pair(decode_blocks=60)).run(workload(2.0, n=40, prompt=200, output=40))
    assert all(r.finish_s is not None for r in reqs)  # 15 blocks each: 4 run at once


def test_round_robin_spreads_and_prefix_affinity_follows_the_prefix():
    specs = [WorkerSpec(f"p{i}", "prefill", prefill=PREFILL) for i in range(2)]
    specs.append(WorkerSpec("d0", "decode", decode=DECODE))
    reqs = Simulator(specs, SchedulerConfig(routing="round_robin")).run(workload(1.0, n=10))
    assert [r.prefill_worker for r in reqs] == ["p0", "p1"] * 5
    shared = [tuple(range(64)), tuple(range(500, 564))]  # two system prompts
    reqs = Simulator(specs, SchedulerConfig(routing="prefix_affinity")).run(
        [SimRequest(i * 0.5, shared[i % 2] + (i,), 4) for i in range(10)]
    )
    homes = [{r.prefill_worker for r in reqs[k::2]} for k in (0, 1)]
    assert all(len(h) == 1 for h in homes) and homes[0] != homes[1]


def test_prefix_affinity_raises_the_prefix_cache_hit_rate_over_round_robin():
    # 8 system prompts of 256 tokens, each request one of them plus 32 tokens of its own;
    # 2 prefill workers whose caches hold 96 blocks of 16 tokens (about 4 system prompts).
    rng = random.Random(0)
    systems = [tuple(range(1000 * k, 1000 * k + 256)) for k in range(8)]
    work = [
        SimRequest(
            t, systems[rng.randrange(8)] + tuple(rng.randrange(50_000) for _ in range(32)), 4
        )
        for t in gamma_arrivals(1.0, 300, seed=4)
    ]
    specs = [WorkerSpec(f"p{i}", "prefill", prefill=PREFILL, num_blocks=96) for i in range(2)]
    specs.append(WorkerSpec("d0", "decode", decode=DECODE))
    rates = {}
    for routing in ("round_robin", "least_loaded", "prefix_affinity"):
        done = Simulator(specs, SchedulerConfig(routing=routing)).run([replace(r) for r in work])
        rates[routing] = summarize(done, 2.0, 0.1).prefix_hit_rate
    print("prefix-cache hit rate:", {k: f"{v:.0%}" for k, v in rates.items()})
    assert rates["prefix_affinity"] > rates["round_robin"] + 0.2  # 80% against 55%
    assert rates["prefix_affinity"] > rates["least_loaded"] + 0.2  # at most 256 / 288 = 89%


def test_admission_refuses_exactly_the_requests_that_would_miss_their_deadline():
    # One prefill worker computing exactly 1,000 tokens/s in steps of 32 tokens, its load
    # seen every millisecond; 200-token prompts at 1.2x its capacity, each with its own
    # deadline. The prediction's resolution is one step (32 ms) either way.
    specs = [
        WorkerSpec("p0", "prefill", prefill=PrefillCost(token_s=0.001), max_num_batched_tokens=32),
        WorkerSpec("d0", "decode", decode=DECODE),
    ]
    rng = random.Random(5)
    work = [
        SimRequest(t, tuple((i * 7 + j) % 1000 for j in range(200)), 2, rng.uniform(0.25, 2.0))
        for i, t in enumerate(gamma_arrivals(6.0, 80, seed=5))
    ]
    config = SchedulerConfig(max_queued_prompt_tokens=0)  # deadlines alone refuse
    done = Simulator(specs, config, report_interval_s=0.001).run(work)
    admitted = [r for r in done if not r.refused]
    refused = [r for r in done if r.refused]
    assert len(refused) >= 10 and len(admitted) >= 30
    assert all(r.ttft_s <= r.deadline_s + 0.032 for r in admitted)
    for r in refused:  # had it been admitted behind those before it, it would have missed
        before = [replace(a, deadline_s=None) for a in admitted if a.arrival_s < r.arrival_s]
        alone = replace(r, deadline_s=None, refused=False)
        Simulator(specs, config, report_interval_s=0.001).run([*before, alone])
        assert alone.ttft_s > r.deadline_s - 0.032, (r.arrival_s, alone.ttft_s, r.deadline_s)


def test_admission_learns_the_delay_its_prediction_leaves_out():
    # Each first token reaches its client 0.4 s after its worker samples it (the frontend's
    # per-request overheads, the trip back): the prediction counts only prompt tokens over
    # the prefill rate. At 1.5x capacity under a 2 s TTFT SLO, admission without a margin
    # fills the queue up to 2 s of predicted wait, so admitted requests arrive up to 0.4 s
    # late; the learned margin stops that once its first 10 observations are in.
    capacity = 1000 / 410
    slo = dict(ttft_slo_s=2.0, tpot_slo_s=0.1)

    def run(quantile):
        config = SchedulerConfig(ttft_slo_s=2.0, ttft_margin_quantile=quantile)
        sim = Simulator(pair(), config, first_token_delay_s=0.4)
        done = sim.run(workload(1.5 * capacity))
        late = [r for r in done if not r.refused and r.ttft_s > 2.0]
        return done, late, sim.router.ttft_margin_s("prefill")

    plain, plain_late, _ = run(None)
    learned, learned_late, margin = run(SchedulerConfig().ttft_margin_quantile)
    assert len(plain_late) > 50
    assert len(learned_late) <= 10 and all(r.arrival_s < 15 for r in learned_late)
    # The delay, plus the prediction's own error (load seen up to one 0.2 s report late) at
    # its 98th percentile.
    assert 0.4 <= margin <= 0.8
    sustained = Simulator(pair(), first_token_delay_s=0.4).run(workload(0.6 * capacity))
    assert summarize(learned, **slo).goodput >= 0.85 * summarize(sustained, **slo).goodput
