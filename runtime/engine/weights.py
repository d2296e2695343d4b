"""Load a local Hugging Face Llama-family checkpoint into our fused weight layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from runtime.engine.model import LayerWeights, ModelGeometry, ModelWeights

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_hf_config(path: str | Path):
    """transformers' config for a local model directory, refusing unsupported architectures."""
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a Hugging Face model directory: config.json is missing")
    config = AutoConfig.from_pretrained(str(path))
    archs = set(getattr(config, "architectures", None) or [])
    if not archs & SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {sorted(archs)} in {path}; Tandem serves "
            f"{sorted(SUPPORTED_ARCHITECTURES)}"
        )
    return config


def geometry_of(config) -> ModelGeometry:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return ModelGeometry(
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim=head_dim,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        rms_norm_eps=config.rms_norm_eps,
        max_position_embeddings=config.max_position_embeddings,
    )


def rope_inv_freq(config, head_dim: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and cos/sin scaling, computed by transformers for static rope types."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        return inv, 1.0
    if rope_type not in ("linear", "llama3", "yarn"):
        raise ValueError(
            f"rope type {rope_type!r} is not supported (default, linear, llama3, yarn)"
        )
    inv, scaling = ROPE_INIT_FUNCTIONS[rope_type](config)
    return inv.float(), float(scaling)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors weights in {path}")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for name in sf.keys():
                tensors[name] = sf.get_tensor(name)
    return tensors


def load_weights(path: str | Path, config, dtype: str) -> ModelWeights:
    """Read safetensors, cast to `dtype`, stack q/k/v and gate/up for fewer, larger matmuls."""
    path = Path(path)
    t = _read_tensors(path)
    dt = DTYPES[dtype]
    g = geometry_of(config)

    def take(name: str) -> torch.Tensor:
        if name not in t:
            raise ValueError(f"weight {name!r} missing from {path}")
        return t.pop(name).to(dt).contiguous()

    def maybe(name: str) -> torch.Tensor | None:
        return take(name) if name in t else None

    layers = []
    for i in range(g.num_layers):
        p = f"model.layers.{i}."
        qkv_bias = None
        if f"{p}self_attn.q_proj.bias" in t:
            qkv_bias = torch.cat([take(f"{p}self_attn.{x}_proj.bias") for x in "qkv"])
        layers.append(
            LayerWeights(
                input_norm=take(f"{p}input_layernorm.weight"),
                qkv=torch.cat([take(f"{p}self_attn.{x}_proj.weight") for x in "qkv"]),
                qkv_bias=qkv_bias,
                q_norm=maybe(f"{p}self_attn.q_norm.weight"),
                k_norm=maybe(f"{p}self_attn.k_norm.weight"),
                o_proj=take(f"{p}self_attn.o_proj.weight"),
                post_norm=take(f"{p}post_attention_layernorm.weight"),
                gate_up=torch.cat(
                    [take(f"{p}mlp.gate_proj.weight"), take(f"{p}mlp.up_proj.weight")]
                ),
                down=take(f"{p}mlp.down_proj.weight"),
            )
        )
    embed = take("model.embed_tokens.weight")
    tied = getattr(config, "tie_word_embeddings", False) or "lm_head.weight" not in t
    lm_head = embed if tied else take("lm_head.weight")
    inv_freq, scaling = rope_inv_freq(config, g.head_dim)
    return ModelWeights(
        embed=embed,
        layers=layers,
        norm=take("model.norm.weight"),
        lm_head=lm_head,
        inv_freq=inv_freq,
        rope_scaling=scaling,
    )


def read_generation_eos(path: str | Path, config) -> set[int]:
    """EOS token ids from generation_config.json, falling back to the model config."""
    ids: set[int] = set()
    gen = Path(path) / "generation_config.json"
    sources = [json.loads(gen.read_text())] if gen.is_file() else []
    sources.append({"eos_token_id": getattr(config, "eos_token_id", None)})
    for src in sources:
        eos = src.get("eos_token_id")
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list):
            ids.update(int(e) for e in eos)
    return ids
