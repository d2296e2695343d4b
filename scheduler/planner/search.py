"""The search: each configuration (a colocated worker, or P prefill and D decode workers, on
one or two hardware profiles) is simulated on the workload to find its goodput (the highest
request rate at which `attainment` of the requests meet both SLOs, DistServe's measure), the
replicas of it the workload's rate needs, their cost per million tokens, and the TTFT and
TPOT at the share of the rate each replica serves."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.config import SchedulerConfig
from scheduler.costs import TransferCost, WorkerSpec
from scheduler.planner.model_shape import ModelShape
from scheduler.planner.profiles import HardwareProfile
from scheduler.planner.roofline import WorkerCosts, handoff_cost, min_tp, worker_costs
from scheduler.planner.workload_file import WorkloadSpec
from scheduler.simulator import SimRequest, Simulator

# No admission: every request is served, as vLLM does; goodput counts those within the SLO.
UNADMITTED = SchedulerConfig(max_queued_prompt_tokens=0)
RATIOS = ((1, 1), (1, 2), (2, 1), (1, 3), (3, 1))
COLOCATED_BUDGETS = (512, 2048)


@dataclass(frozen=True)
class SLO:
    ttft_s: float
    tpot_s: float
    attainment: float = 0.9


@dataclass(frozen=True)
class Configuration:
    """`prefill` None: `num_decode` colocated workers on `decode`. Each worker spans `tp`
    devices of its profile."""

    prefill: HardwareProfile | None
    decode: HardwareProfile
    num_prefill: int
    num_decode: int
    tp_prefill: int
    tp_decode: int
    max_num_batched_tokens: int = 2048  # the colocated engines' step budget

    @property
    def colocated(self) -> bool:
        return self.prefill is None

    @property
    def label(self) -> str:
        d = f"{self.decode.name}" + (f" tp{self.tp_decode}" if self.tp_decode > 1 else "")
        if self.prefill is None:
            return f"colocated {self.num_decode}x {d} ({self.max_num_batched_tokens} tok/step)"
        p = f"{self.prefill.name}" + (f" tp{self.tp_prefill}" if self.tp_prefill > 1 else "")
        return f"{self.num_prefill}P {p} : {self.num_decode}D {d}"

    @property
    def devices(self) -> int:
        return self.num_prefill * self.tp_prefill + self.num_decode * self.tp_decode

    @property
    def price_per_hour(self) -> float:
        p = (
            self.prefill.price_per_hour * self.num_prefill * self.tp_prefill
            if self.prefill
            else 0.0
        )
        return p + self.decode.price_per_hour * self.num_decode * self.tp_decode


@dataclass(frozen=True)
class Prediction:
    config: Configuration
    goodput: float  # req/s one replica serves within the SLO
    replicas: int  # to serve the workload's rate
    rate_per_replica: float
    median_ttft_s: float
    median_tpot_s: float
    attainment: float  # at rate_per_replica
    cost_per_mtok: float  # USD per million tokens (prompt + output) at goodput

    @property
    def goodput_per_device(self) -> float:
        return self.goodput / self.config.devices

    @property
    def price_per_hour(self) -> float:
        return self.replicas * self.config.price_per_hour


@dataclass(frozen=True)
class Figures:
    """What one simulated run at a rate gives (vLLM `bench serve`'s definitions)."""

    rate: float
    attainment: float
    request_throughput: float
    goodput: float
    median_ttft_s: float
    median_tpot_s: float


class Planner:
    """Builds, simulates and ranks configurations of `shape` on `profiles` for `workload`.

    `max_num_batched_tokens`, `max_num_seqs`: the engines' limits (a profile with measured
    engine costs uses its own). `block_size`: the KV cache's."""

    def __init__(
        self,
        shape: ModelShape,
        workload: WorkloadSpec,
        slo: SLO,
        max_num_batched_tokens: int = 2048,
        max_num_seqs: int = 256,
        block_size: int = 16,
    ):
        self.shape, self.workload, self.slo = shape, workload, slo
        self.max_num_batched_tokens, self.max_num_seqs = max_num_batched_tokens, max_num_seqs
        self.block_size = block_size

    # -- configurations -----------------------------------------------------------------
    def configurations(
        self, profiles: Sequence[HardwareProfile], ratios: Sequence[tuple[int, int]] = RATIOS
    ) -> list[Configuration]:
        """A colocated worker on each profile at each of `COLOCATED_BUDGETS` tokens per step
        (a smaller step bounds how much a prompt delays the running sequences' next token,
        as chunked prefill is tuned), and each prefill:decode ratio on each ordered pair of
        profiles (mixed ones included); profiles that cannot hold the model are left out."""
        tps = {p.name: min_tp(self.shape, p) for p in profiles}
        fit = [p for p in profiles if tps[p.name] is not None]
        out = [
            Configuration(None, p, 0, 1, 0, tps[p.name] or 1, budget)
            for p in fit
            for budget in COLOCATED_BUDGETS
        ]
        for pp in fit:
            for pd in fit:
                for np_, nd in ratios:
                    out.append(Configuration(pp, pd, np_, nd, tps[pp.name] or 1, tps[pd.name] or 1))
        return out

    def costs(self, profile: HardwareProfile, tp: int) -> WorkerCosts:
        return worker_costs(self.shape, profile, self.workload, tp, self.block_size)

    def specs(self, config: Configuration) -> tuple[list[WorkerSpec], TransferCost | None]:
        specs = []
        roles = [("decode", config.decode, config.num_decode, config.tp_decode)]
        if config.prefill is not None:
            roles.insert(0, ("prefill", config.prefill, config.num_prefill, config.tp_prefill))
        for role, profile, n, tp in roles:
            c = self.costs(profile, tp)
            measured = (
                profile.engine
                if profile.engine and profile.engine.model == self.shape.fingerprint
                else None
            )
            for i in range(n):
                specs.append(
                    WorkerSpec(
                        f"{role}-{profile.name}-{i}",
                        "colocated" if config.colocated else role,
                        prefill=c.prefill,
                        decode=c.decode,
                        max_num_batched_tokens=measured.max_num_batched_tokens
                        if measured
                        else config.max_num_batched_tokens
                        if config.colocated
                        else self.max_num_batched_tokens,
                        max_num_seqs=measured.max_num_seqs if measured else self.max_num_seqs,
                        num_blocks=c.num_blocks,
                        block_size=c.block_size,
                    )
                )
        if config.prefill is None:
            return specs, None
        kv = self.costs(config.prefill, config.tp_prefill).kv_bytes_per_token
        return specs, handoff_cost(
            config.prefill, config.decode, kv, min(config.tp_prefill, config.tp_decode)
        )

    # -- simulation ---------------------------------------------------------------------
    def simulate(
        self, config: Configuration, rate: float, requests: Sequence[SimRequest] | None = None
    ) -> Figures:
        """The figures of `config` serving the workload at `rate`, or serving `requests`
        (fresh ones, e.g. the arrivals and lengths a measured run had) when given."""
        specs, transfer = self.specs(config)
        todo = list(requests) if requests is not None else self.workload.requests(rate)
        reqs = Simulator(specs, UNADMITTED, transfer).run(todo)
        return figures(reqs, rate, self.slo)

    def capacity_bound(self, config: Configuration) -> float:
        """An upper bound on a configuration's rate: each pool's work done at full batch."""
        w = self.workload

        def prefill_rate(c: WorkerCosts) -> float:
            return 1.0 / c.prefill.step_seconds(w.input_len) if w.input_len else math.inf

        def decode_rate(c: WorkerCosts) -> float:
            batch = max(
                min(self.max_num_seqs, c.num_blocks * c.block_size // (w.input_len + w.output_len)),
                1,
            )
            return batch / (w.output_len * c.decode.step_seconds(batch))

        d = self.costs(config.decode, config.tp_decode)
        if config.prefill is None:
            return config.num_decode / (1 / prefill_rate(d) + 1 / decode_rate(d))
        p = self.costs(config.prefill, config.tp_prefill)
        return min(config.num_prefill * prefill_rate(p), config.num_decode * decode_rate(d))

    def goodput(self, config: Configuration, iterations: int = 7) -> float:
        """The highest rate meeting the SLO at its attainment, by bisection below the bound."""
        lo, hi = 0.0, 1.2 * self.capacity_bound(config)
        if self.simulate(config, hi).attainment >= self.slo.attainment:
            return hi
        for _ in range(iterations):
            mid = (lo + hi) / 2
            if self.simulate(config, mid).attainment >= self.slo.attainment:
                lo = mid
            else:
                hi = mid
        return lo

    def predict(self, config: Configuration) -> Prediction:
        goodput = self.goodput(config)
        replicas = max(math.ceil(self.workload.rate / goodput), 1) if goodput > 0 else 0
        rate = self.workload.rate / max(replicas, 1)
        at = self.simulate(config, rate)
        tokens_per_hour = goodput * 3600 * (self.workload.input_len + self.workload.output_len)
        return Prediction(
            config,
            goodput,
            replicas,
            rate,
            at.median_ttft_s,
            at.median_tpot_s,
            at.attainment,
            config.price_per_hour / tokens_per_hour * 1e6 if tokens_per_hour else math.inf,
        )

    def rank(self, configs: Sequence[Configuration]) -> list[Prediction]:
        """Predictions, cheapest per million tokens within the SLO first (no goodput: last)."""
        return sorted(
            (self.predict(c) for c in configs), key=lambda p: (p.goodput <= 0, p.cost_per_mtok)
        )


def figures(reqs: Sequence[SimRequest], rate: float, slo: SLO) -> Figures:
    done = [r for r in reqs if r.finish_s is not None]
    good = [
        r
        for r in done
        if (r.ttft_s or 0.0) <= slo.ttft_s and (r.tpot_s is None or r.tpot_s <= slo.tpot_s)
    ]
    # From the run's start (time 0), not the first arrival, as `bench serve` times it.
    end = max((r.finish_s or 0.0) for r in done) if done else 0.0
    duration = max(end, 1e-9)
    ttfts = [r.ttft_s for r in done if r.ttft_s is not None]
    tpots = [r.tpot_s for r in done if r.tpot_s is not None]
    return Figures(
        rate,
        len(good) / len(reqs),
        len(done) / duration,
        len(good) / duration,
        statistics.median(ttfts) if ttfts else 0.0,
        statistics.median(tpots) if tpots else 0.0,
    )


def disaggregation_pays(predictions: Sequence[Prediction]) -> bool:
    """Whether the best disaggregated configuration serves more within the SLO per device
    than the best colocated one (DistServe's comparison: goodput per GPU)."""

    def best(colocated: bool) -> float:
        return max(
            (p.goodput_per_device for p in predictions if p.config.colocated == colocated),
            default=0.0,
        )

    return best(False) > best(True)
