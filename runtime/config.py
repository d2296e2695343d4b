"""Frozen configuration of the engine layers, composed from the CLI/config file downwards."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

ROLES = ("colocated", "prefill", "decode")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelConfig:
    """Which weights to load and in what precision.

    `path` is a local Hugging Face directory (config.json + safetensors + tokenizer).
    `max_model_len` caps prompt + output tokens; None takes the model's own limit.
    `device`: "cpu", or "cuda"/"cuda:N" for the GPU runner (Triton kernels, CUDA graphs for
    decode steps unless `enforce_eager`).
    """

    path: str
    dtype: str = "float32"
    max_model_len: int | None = None
    device: str = "cpu"
    enforce_eager: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache: `num_blocks` blocks of `block_size` tokens each.

    With `num_blocks=None` the cache takes `memory_gib` of memory.
    """

    block_size: int = 16
    num_blocks: int | None = None
    memory_gib: float = 2.0
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.memory_gib <= 0:
            raise ValueError(f"memory_gib must be > 0, got {self.memory_gib}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching limits: sequences per step and the per-step token budget.

    With chunked prefill a long prompt is split across steps to fit the budget; without it a
    prompt must fit the budget whole.
    """

    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    enable_chunked_prefill: bool = True

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}"
            )


@dataclass(frozen=True)
class EngineConfig:
    """Everything one engine instance needs. `role` picks the disaggregation split."""

    model: ModelConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    role: str = "colocated"
    seed: int = 0
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")


@dataclass(frozen=True)
class EngineSettings:
    """Engine knobs as a cluster file gives them: its shared `engine` section, and each pool's
    `engine` overrides (a GPU prefill pool in bfloat16 beside a CPU decode pool, say).

    Every field is a field of `ModelConfig`, `CacheConfig`, `SchedulerConfig` or
    `EngineConfig`, by the same name; None leaves it to the layer below: a pool's override,
    then the shared section, then that config's own default (declared there, once).
    """

    dtype: str | None = None
    device: str | None = None
    enforce_eager: bool | None = None
    block_size: int | None = None
    num_blocks: int | None = None
    memory_gib: float | None = None
    enable_prefix_caching: bool | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool | None = None
    num_threads: int | None = None
    seed: int | None = None

    def over(self, base: "EngineSettings") -> "EngineSettings":
        """`base` with the fields set here taking precedence."""
        return replace(base, **self._set())

    def engine_config(self, model: ModelConfig, role: str) -> EngineConfig:
        """The engine's frozen config: `model` (its path and context) with these settings,
        every unset knob at its config's default. ValueError names a bad value."""
        values = self._set()

        def pick(cls) -> dict:
            return {f.name: values[f.name] for f in fields(cls) if f.name in values}

        return EngineConfig(
            model=replace(model, **pick(ModelConfig)),
            cache=CacheConfig(**pick(CacheConfig)),
            scheduler=SchedulerConfig(**pick(SchedulerConfig)),
            role=role,
            **pick(EngineConfig),
        )

    def _set(self) -> dict:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }
