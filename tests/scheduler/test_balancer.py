"""The pool balancer: its policy on its own, and carried out in the simulator."""

from dataclasses import replace

from scheduler import SchedulerConfig
from scheduler.balancer import Balancer, PoolState
from scheduler.config import BalancerConfig
from scheduler.costs import DecodeCost, PrefillCost, WorkerSpec
from scheduler.simulator import SimRequest, Simulator
from scheduler.workload import gamma_arrivals, summarize

CONFIG = BalancerConfig(enabled=True, window_s=10, cooldown_s=30, min_requests=5)


def pools(p=2, d=2, p_pressure=0.5, d_pressure=0.5, bounds=(1, 4)):
    return (
        PoolState("prefill", p, *bounds, pressure=p_pressure),
        PoolState("decode", d, *bounds, pressure=d_pressure),
    )


def feed(b: Balancer, now: float, n: int, ttft: float, tpot: float) -> None:
    for i in range(n):
        b.observe_request(now - i * 0.1, ttft, tpot)


def test_a_pool_missing_its_slo_takes_a_worker_from_one_with_spare_capacity():
    b = Balancer(CONFIG, ttft_slo_s=1.0, tpot_slo_s=0.1)
    feed(b, 100, 20, ttft=3.0, tpot=0.02)  # TTFT missed, TPOT easily met
    action = b.decide(100, *pools(d_pressure=0.1))
    assert (action.kind, action.role, action.source) == ("flip", "prefill", "decode")
    assert "prefill meets its SLO for 0% of requests" in action.reason
    feed(b, 110, 20, ttft=3.0, tpot=0.02)
    assert b.decide(110, *pools(d_pressure=0.1)) is None  # cooling down
    feed(b, 140, 20, ttft=3.0, tpot=0.02)
    assert b.decide(140, *pools(d_pressure=0.1)).kind == "flip"  # still short after it


def test_without_spare_capacity_elsewhere_the_pool_grows_within_its_bounds():
    b = Balancer(CONFIG, 1.0, 0.1)
    feed(b, 100, 20, ttft=3.0, tpot=0.02)
    action = b.decide(100, *pools(d_pressure=0.6))  # decode busy: no flip
    assert (action.kind, action.role) == ("scale_up", "prefill")
    b = Balancer(CONFIG, 1.0, 0.1)
    feed(b, 100, 20, ttft=3.0, tpot=0.02)
    assert b.decide(100, *pools(p=4, d_pressure=0.6)) is None  # at max_replicas
    b = Balancer(CONFIG, 1.0, 0.1)
    feed(b, 100, 20, ttft=3.0, tpot=0.02)
    assert b.decide(100, *pools(d=1, d_pressure=0.1)).kind == "scale_up"  # decode at its min


def test_refusals_count_as_prefill_misses_and_pressure_alone_can_ask():
    b = Balancer(CONFIG, 1.0, 0.1)
    feed(b, 100, 5, ttft=0.1, tpot=0.02)
    for i in range(10):
        b.observe_refusal(100 - i * 0.1)
    assert b.decide(100, *pools(d_pressure=0.1)).role == "prefill"
    b = Balancer(CONFIG, 1.0, 0.1)
    feed(b, 100, 20, ttft=0.1, tpot=0.02)
    action = b.decide(100, *pools(p_pressure=0.1, d_pressure=1.5))
    assert (action.kind, action.role) == ("flip", "decode")
    assert "decode is at 150% of its capacity" in action.reason


def test_hysteresis_keeps_a_balanced_cluster_still_and_idle_pools_shrink():
    b = Balancer(CONFIG, 1.0, 0.1)
    feed(b, 100, 20, ttft=0.95, tpot=0.05)  # all within the SLOs, moderate pressure
    assert b.decide(100, *pools(p_pressure=0.5, d_pressure=0.5)) is None
    assert b.decide(100, *pools(p=1, d=1, p_pressure=0.1, d_pressure=0.1)) is None  # at min
    action = b.decide(100, *pools(p=3, p_pressure=0.1, d_pressure=0.5))
    assert (action.kind, action.role) == ("scale_down", "prefill")
    assert Balancer(CONFIG, 1.0, 0.1).decide(100, *pools(p_pressure=5)) is None  # no data


PREFILL = PrefillCost(token_s=0.001, step_s=0.01)
DECODE = DecodeCost(step_s=0.02, seq_s=0.001)


def test_the_simulated_cluster_flips_a_decode_worker_to_prefill_and_loses_nothing():
    spec = WorkerSpec("w", "prefill", prefill=PREFILL, decode=DECODE)
    workers = [replace(spec, name="p0")] + [
        replace(spec, name=f"d{i}", role="decode") for i in range(3)
    ]
    # Prompt-heavy: 800-token prompts at 2 req/s need 1.6 prefill workers; decode idles.
    arrivals = gamma_arrivals(2.0, 600, seed=1)
    work = [SimRequest(t, tuple(range(i % 50, i % 50 + 800)), 8) for i, t in enumerate(arrivals)]
    config = SchedulerConfig(
        ttft_slo_s=2.0,
        tpot_slo_s=0.1,
        balancer=BalancerConfig(enabled=True, window_s=20, cooldown_s=30, interval_s=2),
    )
    static = summarize(
        Simulator(workers, replace(config, balancer=BalancerConfig())).run(
            [replace(r) for r in work]
        ),
        2.0,
        0.1,
    )
    sim = Simulator(workers, config, startup_s=5)
    done = sim.run(work)
    balanced = summarize(done, 2.0, 0.1)
    assert [(a.kind, a.role) for a in sim.actions][:1] == [("flip", "prefill")]
    assert all(r.refused or r.finish_s is not None for r in done)  # nothing lost
    roles = sorted(w.spec.role for w in sim.workers.values())
    assert roles.count("prefill") >= 2 and roles.count("decode") >= 1
    assert balanced.goodput > 1.3 * static.goodput
