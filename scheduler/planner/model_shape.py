"""A decoder-only model's shape, from its Hugging Face `config.json`, and the work it costs:
parameters, matmul and attention FLOPs per token, weight and KV bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    bytes_per_param: int = 2  # bf16 weights and KV

    @classmethod
    def from_config(cls, config: dict, bytes_per_param: int = 2) -> ModelShape:
        heads = config["num_attention_heads"]
        return cls(
            num_layers=config["num_hidden_layers"],
            hidden_size=config["hidden_size"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            intermediate_size=config["intermediate_size"],
            vocab_size=config["vocab_size"],
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            bytes_per_param=bytes_per_param,
        )

    @classmethod
    def from_dir(cls, model_dir: str | Path, bytes_per_param: int = 2) -> ModelShape:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise ValueError(f"{model_dir}: no config.json (a Hugging Face model directory)")
        return cls.from_config(json.loads(path.read_text()), bytes_per_param)

    @property
    def fingerprint(self) -> str:
        """Names the shape (two models of one shape cost the same)."""
        return (
            f"L{self.num_layers}-h{self.hidden_size}-a{self.num_heads}/{self.num_kv_heads}"
            f"-d{self.head_dim}-i{self.intermediate_size}-v{self.vocab_size}"
        )

    @property
    def layer_params(self) -> int:
        h, d = self.hidden_size, self.head_dim
        attention = 2 * h * self.num_heads * d + 2 * h * self.num_kv_heads * d
        return attention + 3 * h * self.intermediate_size

    @property
    def num_params(self) -> int:
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)
        return self.num_layers * self.layer_params + embeddings

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.bytes_per_param

    def matmul_flops_per_token(self) -> float:
        """2 FLOPs per weight a token passes (the input embedding is a lookup)."""
        return 2.0 * (self.num_layers * self.layer_params + self.vocab_size * self.hidden_size)

    def attention_flops_per_token(self, context: float) -> float:
        """Scores and weighted values of one query token over `context` keys."""
        return 4.0 * self.num_layers * self.num_heads * self.head_dim * context
