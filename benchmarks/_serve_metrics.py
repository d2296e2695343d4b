"""benchmarks/serve.py's metrics, with vLLM `bench serve`'s definitions and JSON key names.

Per successful request: TTFT is the time from sending to the first streamed token; ITL is
every gap between two streamed chunks (one chunk usually carries one token); E2EL is the
time from sending to the last chunk; TPOT is (E2EL - TTFT) / (output tokens - 1), for
requests with more than one output token (it leaves out the first token). A request is
"good" when each SLO given to `--goodput` (ttft, tpot, e2el in ms) holds; a request with one
output token counts a TPOT of 0 there. Throughputs divide by the run's wall time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METRICS = ("ttft", "tpot", "itl", "e2el")
SLO_NAMES = ("ttft", "tpot", "e2el")


@dataclass
class RequestOutput:
    """What one request measured on the client (seconds; `start_time` on perf_counter)."""

    prompt_len: int
    success: bool = False
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    start_time: float = 0.0
    generated_text: str = ""
    error: str = ""

    @property
    def tpot(self) -> float:
        """vLLM's TPOT of this request; 0 with one output token or fewer."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def parse_goodput(pairs: list[str] | None) -> dict[str, float]:
    """`["ttft:2000", "tpot:200"]` -> {"ttft": 2000.0, "tpot": 200.0} (milliseconds).

    Raises ValueError naming the pair to fix: not NAME:MS, an unknown name, a negative value."""
    slos: dict[str, float] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition(":")
        try:
            ms = float(value)
        except ValueError:
            ms = float("nan")
        if not sep or ms != ms:
            raise ValueError(f"--goodput {pair!r}: expected NAME:MILLISECONDS, e.g. ttft:2000")
        if name not in SLO_NAMES:
            raise ValueError(f"--goodput {pair!r}: the SLO name must be one of {SLO_NAMES}")
        if ms < 0:
            raise ValueError(f"--goodput {pair!r}: the SLO must be non-negative")
        slos[name] = ms
    return slos


def _stats(name: str, values: list[float], percentiles: list[float]) -> dict[str, float]:
    data = values or [0.0]  # vLLM reports 0 for a metric with no samples
    out = {
        f"mean_{name}_ms": float(np.mean(data)) * 1000,
        f"median_{name}_ms": float(np.median(data)) * 1000,
        f"std_{name}_ms": float(np.std(data)) * 1000,
    }
    for p in percentiles:
        word = str(int(p)) if int(p) == p else str(p)
        out[f"p{word}_{name}_ms"] = float(np.percentile(data, p)) * 1000
    return out


def calculate_metrics(
    outputs: list[RequestOutput],
    duration_s: float,
    percentiles: list[float] = (50.0, 90.0, 99.0),  # type: ignore[assignment]
    goodput: dict[str, float] | None = None,
    metrics: tuple[str, ...] = METRICS,
) -> dict:
    """The summary of one run, under vLLM's keys: completed, failed, total_input_tokens,
    total_output_tokens, request_throughput, request_goodput (None without SLOs),
    output_throughput, total_token_throughput, and mean/median/std/pN of each of `metrics`
    in milliseconds (e.g. median_ttft_ms, p99_tpot_ms)."""
    done = [o for o in outputs if o.success]
    values = {
        "ttft": [o.ttft for o in done],
        "tpot": [o.tpot for o in done if o.output_tokens > 1],
        "itl": [gap for o in done for gap in o.itl],
        "e2el": [o.latency for o in done],
    }
    total_input = sum(o.prompt_len for o in done)
    total_output = sum(o.output_tokens for o in done)
    good = None
    if goodput:
        limits = {k: v / 1000 for k, v in goodput.items()}
        measured = {"ttft": lambda o: o.ttft, "tpot": lambda o: o.tpot, "e2el": lambda o: o.latency}
        num_good = sum(all(measured[k](o) <= s for k, s in limits.items()) for o in done)
        good = num_good / duration_s
    result: dict = {
        "duration": duration_s,
        "completed": len(done),
        "failed": len(outputs) - len(done),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(done) / duration_s,
        "request_goodput": good,
        "output_throughput": total_output / duration_s,
        "total_token_throughput": (total_input + total_output) / duration_s,
    }
    for name in metrics:
        result.update(_stats(name, values[name], list(percentiles)))
    return result


def detailed(outputs: list[RequestOutput]) -> dict[str, list]:
    """The per-request lists vLLM's `--save-detailed` adds (failed requests included)."""
    return {
        "input_lens": [o.prompt_len for o in outputs],
        "output_lens": [o.output_tokens if o.success else 0 for o in outputs],
        "ttfts": [o.ttft for o in outputs],
        "itls": [o.itl for o in outputs],
        "latencies": [o.latency for o in outputs],
        "start_times": [o.start_time for o in outputs],
        "generated_texts": [o.generated_text for o in outputs],
        "errors": [o.error for o in outputs],
    }
