"""Hardware profiles: what one device (a GPU, an accelerator, a CPU host) offers a worker.

A profile file (`benchmarks/profiles/*.yaml`) states each figure with its source in a
comment; the efficiencies (`mfu`, `mbu`) and the per-step overhead are stated assumptions.
The `local` profile, written by `tandem calibrate`, also carries the engine's own measured
step costs for the model it was calibrated on (`engine`), which the planner uses instead of
the roofline for that model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

FIGURES = (
    "peak_flops",
    "memory_bandwidth",
    "memory_size",
    "interconnect_bandwidth",
    "network_bandwidth",
    "price_per_hour",
    "mfu",
    "mbu",
    "step_overhead_s",
)


@dataclass(frozen=True)
class EngineCosts:
    """The engine's measured step costs on this hardware for one model (`model`: its
    config's `name_or_path`-free fingerprint, see `ModelShape.fingerprint`): a prefill step
    of `n` prompt tokens takes `prefill_step_s + n * prefill_token_s`, a decode step over
    `b` sequences `decode_step_s + b * decode_seq_s`; `kv_bytes_per_token` as the engine
    stores it, `num_blocks` of `block_size` tokens per worker, and the engine's batch limits."""

    model: str
    prefill_token_s: float
    prefill_step_s: float
    decode_step_s: float
    decode_seq_s: float
    kv_bytes_per_token: int
    num_blocks: int
    block_size: int
    max_num_batched_tokens: int
    max_num_seqs: int


@dataclass(frozen=True)
class HardwareProfile:
    """One device. Units: FLOP/s, bytes/s, bytes, USD per hour, seconds.

    - `peak_flops`: dense bf16 matmul peak (the `local` profile: measured in its dtype).
    - `memory_bandwidth`, `memory_size`: the device memory the weights and KV live in.
    - `interconnect_bandwidth`: device to device inside a node (NVLink, Infinity Fabric;
      tensor parallelism and a KV handoff between two devices of this profile).
    - `network_bandwidth`: per device, between nodes (a handoff to another profile).
    - `mfu`, `mbu`: the shares of peak FLOP/s and bandwidth an engine reaches (assumed).
    - `step_overhead_s`: a step's fixed cost beyond its roofline time (launches, Python).
    """

    name: str
    description: str
    peak_flops: float
    memory_bandwidth: float
    memory_size: float
    interconnect_bandwidth: float
    network_bandwidth: float
    price_per_hour: float
    mfu: float
    mbu: float
    step_overhead_s: float
    engine: EngineCosts | None = None

    def __post_init__(self) -> None:
        for name in FIGURES:
            if not getattr(self, name) >= 0:
                raise ValueError(f"profile {self.name}: {name} must be >= 0")
        for name in ("mfu", "mbu"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"profile {self.name}: {name} must be in (0, 1]")


def profile_from_dict(data: dict) -> HardwareProfile:
    """A profile from a parsed file; every figure in `FIGURES` is required."""
    missing = [f for f in ("name", *FIGURES) if f not in data]
    if missing:
        raise ValueError(f"profile {data.get('name', '?')}: missing {', '.join(missing)}")
    engine = data.get("engine")
    return HardwareProfile(
        name=str(data["name"]),
        description=str(data.get("description", "")),
        **{f: float(data[f]) for f in FIGURES},
        engine=EngineCosts(**engine) if engine else None,
    )


def load_profile(path: str | Path) -> HardwareProfile:
    return profile_from_dict(yaml.safe_load(Path(path).read_text()))


def load_profiles(names: list[str], directory: str | Path) -> list[HardwareProfile]:
    """Profiles by name (a file `NAME.yaml` in `directory`) or by path."""
    out = []
    for name in names:
        path = Path(name)
        if not path.suffix:
            path = Path(directory) / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in Path(directory).glob("*.yaml"))
            raise ValueError(f"no profile {name!r} (known: {', '.join(known)})")
        out.append(load_profile(path))
    return out
