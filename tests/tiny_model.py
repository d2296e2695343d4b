"""Build a tiny random-weight Llama with a real byte-level BPE tokenizer, for fast tests."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paged attention keeps the KV cache in fixed-size blocks.",
    "Prefill is compute bound; decode is memory bound.",
    "Hello world! Tandem splits serving into two pools.",
] * 8


def make_tiny_model(
    path: Path,
    *,
    vocab_size: int = 320,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    seed: int = 0,
    arch: str = "llama",
    tie: bool = False,
) -> Path:
    """Write config, safetensors weights and tokenizer for a random model into `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>")
    fast.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    fast.save_pretrained(str(path))

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=tie,
    )
    if arch == "qwen3":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        model = Qwen3ForCausalLM(Qwen3Config(head_dim=hidden_size // num_heads, **common))
    elif arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**common))
    # Random init is small; widen the weights so greedy tokens are not near-ties everywhere.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    model.save_pretrained(str(path))
    return path


def make_engine(
    path,
    *,
    role: str = "colocated",
    dtype: str = "float32",
    block_size: int = 4,
    num_blocks: int = 256,
    budget: int = 2048,
    max_seqs: int = 128,
    chunked: bool = True,
    prefix: bool = True,
    num_threads: int | None = None,
    device: str = "cpu",
):
    """An Engine on a local model directory with the test suites' usual small cache."""
    from runtime.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
    from runtime.engine import Engine

    return Engine(
        EngineConfig(
            model=ModelConfig(path=str(path), dtype=dtype, device=device),
            cache=CacheConfig(
                block_size=block_size, num_blocks=num_blocks, enable_prefix_caching=prefix
            ),
            scheduler=SchedulerConfig(
                max_num_seqs=max_seqs, max_num_batched_tokens=budget, enable_chunked_prefill=chunked
            ),
            role=role,
            num_threads=num_threads,
        )
    )
