"""The planner: profiles with every figure sourced, the roofline's hand-computed costs, and
the direction of two published findings (DistServe, TetriInfer)."""

import re
from dataclasses import replace
from pathlib import Path

import pytest

from scheduler.planner.model_shape import ModelShape
from scheduler.planner.profiles import FIGURES, load_profile, load_profiles
from scheduler.planner.roofline import min_tp, worker_costs
from scheduler.planner.search import SLO, Configuration, Planner, disaggregation_pays
from scheduler.planner.workload_file import WorkloadSpec, load_workload

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "benchmarks" / "profiles"
LLAMA_13B = ModelShape.from_dir(REPO / "benchmarks" / "models" / "llama-2-13b")


def test_every_profile_parses_and_every_figure_has_its_source():
    names = {p.stem for p in PROFILES.glob("*.yaml")}
    assert {"h100-sxm", "h200", "a100-80gb", "l40s", "l4", "cpu-spr-48c", "mi300x"} <= names
    for path in PROFILES.glob("*.yaml"):
        load_profile(path)
        lines = {ln.split(":")[0]: ln for ln in path.read_text().splitlines() if ":" in ln}
        for figure in FIGURES:
            comment = lines[figure].partition("#")[2]
            assert re.search(r"https?://|assumption|measured|data ?sheet|as \w", comment), (
                f"{path.name}: {figure} has no source: {lines[figure]!r}"
            )


def test_llama_13b_shape_and_a100_roofline_by_hand():
    assert LLAMA_13B.num_params == 13_015_449_600
    assert LLAMA_13B.kv_bytes_per_token == 2 * 40 * 40 * 128 * 2
    (a100,) = load_profiles(["a100-80gb"], PROFILES)
    w = WorkloadSpec("w", input_len=1000, output_len=100, rate=1.0)
    c = worker_costs(LLAMA_13B, a100, w)
    flops, bandwidth = 312e12 * 0.5, 2.039e12 * 0.7
    matmul = 2 * (40 * LLAMA_13B.layer_params + 32000 * 5120)
    assert c.prefill.token_s == pytest.approx((matmul + 4 * 40 * 40 * 128 * 500) / flops)
    assert c.decode.step_s == pytest.approx(0.004 + 2 * 13_015_449_600 / bandwidth)
    assert c.num_blocks == int((0.9 * 80e9 - 2 * 13_015_449_600) // (819200 * 16))
    llama_70b = ModelShape.from_dir(REPO / "benchmarks" / "models" / "llama-2-70b")
    assert (min_tp(LLAMA_13B, a100), min_tp(llama_70b, a100)) == (1, 4)


def verdict(workload: str, slo: SLO) -> bool:
    spec = load_workload(REPO / "benchmarks" / "workloads" / f"{workload}.yaml")
    planner = Planner(LLAMA_13B, spec, slo)
    (a100,) = load_profiles(["a100-80gb"], PROFILES)
    configs = planner.configurations([a100], ratios=((1, 1), (2, 1), (3, 1)))
    return disaggregation_pays([planner.predict(c) for c in configs])


def test_disaggregation_pays_for_long_prompts_on_gpus_as_distserve_found():
    assert verdict("long-prompts", SLO(ttft_s=1.0, tpot_s=0.1))


def test_disaggregation_does_not_pay_for_short_prompts_with_light_decode():
    assert not verdict("short-prompts", SLO(ttft_s=0.5, tpot_s=0.2))


def test_the_planner_simulates_given_requests_as_it_does_its_workloads():
    # benchmarks/validate_planner.py hands it the requests a measured run sent.
    (a100,) = load_profiles(["a100-80gb"], PROFILES)
    spec = WorkloadSpec("w", input_len=512, output_len=64, rate=2.0, num_prompts=40)
    planner = Planner(LLAMA_13B, spec, SLO(ttft_s=1.0, tpot_s=0.1))
    config = Configuration(a100, a100, 1, 1, 1, 1)
    assert planner.simulate(config, 2.0, spec.requests(2.0)) == planner.simulate(config, 2.0)
    later = [replace(r, arrival_s=r.arrival_s + 5.0) for r in spec.requests(2.0)]
    shifted = planner.simulate(config, 2.0, later)
    assert shifted.request_throughput < planner.simulate(config, 2.0).request_throughput
    assert shifted.median_ttft_s == pytest.approx(planner.simulate(config, 2.0).median_ttft_s)
