"""Our compact forward pass for Llama-family decoders over the paged KV cache.

Covers Llama (incl. Llama-3 rope scaling), Qwen2 (qkv bias), Qwen3 (per-head q/k norms),
Mistral and SmolLM: GQA, RoPE, RMSNorm, SwiGLU, tied embeddings. The arithmetic follows
transformers' implementation op for op, so float32 greedy tokens match it exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Union

import torch
import torch.nn.functional as F

from kernels.attention import causal_attention, gather_kv, paged_decode_attention
from kernels.backend import cpu_bf16_dot_available
from kernels.linear import MAX_ROWS, linear_small_batch


@dataclass(frozen=True)
class ModelGeometry:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    max_position_embeddings: int

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes per token per element byte (multiply by the dtype's size)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim


@dataclass
class LayerWeights:
    """One decoder layer's weights. The four matmul weights (qkv, o_proj, gate_up, down, and
    ModelWeights.lm_head) become `PackedLinear`s on CPU in half precision (`pack_linear_weights`);
    `linear` takes either form."""

    input_norm: torch.Tensor
    qkv: Linear  # q, k, v projections stacked: [(H + 2*KVH) * D, hidden]
    qkv_bias: torch.Tensor | None  # Qwen2
    q_norm: torch.Tensor | None  # Qwen3
    k_norm: torch.Tensor | None
    o_proj: Linear
    post_norm: torch.Tensor
    gate_up: Linear  # gate and up projections stacked: [2 * I, hidden]
    down: Linear


@dataclass
class ModelWeights:
    embed: torch.Tensor
    layers: list[LayerWeights]
    norm: torch.Tensor
    lm_head: Linear  # the embedding itself when tied
    inv_freq: torch.Tensor  # float32 [head_dim // 2]
    rope_scaling: float  # multiplies cos/sin (1.0 except e.g. yarn)
    # Per-layer tensor lists for kernels.decoder.decode_layers (plain matmul weights), set by
    # pack_linear_weights where that kernel can run; None elsewhere.
    decode_stack: dict | None = None


@dataclass
class PrefillSpan:
    """A run of consecutive tokens of one sequence within the flat batch."""

    token_start: int  # offset in the flat batch
    num_tokens: int
    start_pos: int  # position of the first token; >0 means earlier KV is in the cache
    block_table: torch.Tensor


@dataclass
class AttentionMetadata:
    """How the flat batch splits: `num_decode` single-token sequences first, then spans."""

    slot_mapping: torch.Tensor  # [T] cache slot of each token's KV
    num_decode: int = 0
    decode_block_tables: torch.Tensor | None = None
    decode_context_lens: torch.Tensor | None = None
    prefills: tuple[PrefillSpan, ...] = ()


class PackedLinear(NamedTuple):
    """A matmul weight prepared once at load for CPU decode (`pack_linear_weights`)."""

    packed: torch.Tensor  # oneDNN's blocked layout: batches above MAX_ROWS rows
    dense: torch.Tensor | None  # the plain [N, K] tensor for `linear_small_batch`, or None


Linear = Union[torch.Tensor, PackedLinear]  # a matmul weight, plain or prepacked


def linear(x: torch.Tensor, weight: Linear, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, or the faster path for a `PackedLinear` weight from `pack_linear_weights`."""
    if isinstance(weight, PackedLinear):
        if weight.dense is not None and x.shape[0] <= MAX_ROWS:
            return linear_small_batch(x, weight.dense, bias)
        return torch.ops.mkldnn._linear_pointwise(x, weight.packed, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _can_prepack(dtype: torch.dtype) -> bool:
    if dtype not in (torch.bfloat16, torch.float16) or not torch.backends.mkldnn.is_available():
        return False
    try:
        probe = torch.ones(8, 8, dtype=dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(probe, 32)
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
        return bool(torch.equal(got, F.linear(probe, probe)))
    except (RuntimeError, AttributeError):
        return False


def pack_linear_weights(w: ModelWeights, max_dense_gib: float = 4.0) -> ModelWeights:
    """The same weights with every matmul weight a `PackedLinear`.

    For bf16/fp16 on CPU: F.linear reorders the weight into oneDNN's blocked layout on every
    call, which costs about as much as the matmul itself at decode batch sizes (measured 2x at
    batch 1, 1.6x at batch 32, bit-identical outputs), so it is reordered once here. Decode at
    1..MAX_ROWS sequences goes to the C++ small-batch kernel instead, which reads the plain
    layout (oneDNN spends ~11 us per call before it reads a byte: ~1.4 ms of a SmolLM2 token):
    where that kernel runs (bf16, AVX512-BF16) the plain tensors are kept beside the packed
    ones, which doubles the matmul weights' memory, so only while they total at most
    `max_dense_gib`. float32 keeps plain weights so greedy tokens stay bit-exact with
    transformers. Returns `w` unchanged when oneDNN cannot take the dtype.
    """
    if not _can_prepack(w.embed.dtype):
        return w
    mats = [_plain(t) for lw in w.layers for t in (lw.qkv, lw.o_proj, lw.gate_up, lw.down)]
    dense_gib = sum(t.numel() * t.element_size() for t in mats) / 2**30
    keep_dense = (
        w.embed.dtype is torch.bfloat16 and dense_gib <= max_dense_gib and cpu_bf16_dot_available()
    )

    def pack(weight: Linear) -> PackedLinear:
        t = _plain(weight)
        return PackedLinear(
            torch.ops.mkldnn._reorder_linear_weight(t, 32), t.contiguous() if keep_dense else None
        )

    layers = [
        dataclasses.replace(
            lw,
            qkv=pack(lw.qkv),
            o_proj=pack(lw.o_proj),
            gate_up=pack(lw.gate_up),
            down=pack(lw.down),
        )
        for lw in w.layers
    ]
    return dataclasses.replace(
        w,
        layers=layers,
        lm_head=pack(w.lm_head),
        decode_stack=_decode_stack(layers) if keep_dense else None,
    )


def _plain(weight: Linear) -> torch.Tensor:
    assert isinstance(weight, torch.Tensor), "the weights are packed already"
    return weight


def _decode_stack(layers: list[LayerWeights]) -> dict | None:
    """The plain per-layer weights as kernels.decoder.decode_layers takes them, or None when
    a matmul's inner size is not a multiple of 32 (the GEMV's unit)."""

    def dense(weight: Linear) -> torch.Tensor:
        assert isinstance(weight, PackedLinear) and weight.dense is not None, "packed with dense"
        return weight.dense

    if any(
        dense(lw.qkv).shape[1] % 32
        or dense(lw.o_proj).shape[1] % 32
        or dense(lw.down).shape[1] % 32
        for lw in layers
    ):
        return None

    def each(get) -> list[torch.Tensor]:
        values = [get(lw) for lw in layers]
        return [] if values[0] is None else [v.contiguous() for v in values]

    return {
        "input_norm": each(lambda lw: lw.input_norm),
        "qkv": each(lambda lw: dense(lw.qkv)),
        "qkv_bias": each(lambda lw: lw.qkv_bias),
        "q_norm": each(lambda lw: lw.q_norm),
        "k_norm": each(lambda lw: lw.k_norm),
        "o_proj": each(lambda lw: dense(lw.o_proj)),
        "post_norm": each(lambda lw: lw.post_norm),
        "gate_up": each(lambda lw: dense(lw.gate_up)),
        "down": each(lambda lw: dense(lw.down)),
    }


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype is not torch.float32:
        # Half precisions take the fused kernel (it accumulates in float32 too); float32
        # follows transformers op for op so greedy tokens stay bit-exact.
        return F.rms_norm(x, weight.shape, weight, eps)
    xf = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf


def rope_cos_sin(weights: ModelWeights, positions: torch.Tensor, dtype: torch.dtype):
    """cos and a sign-folded sin, [T, 1, head_dim], so that
    rope(x) = x * cos + roll(x, half) * sin_signed equals transformers'
    x * cos + rotate_half(x) * sin bit for bit ((-a) * b == a * (-b) in IEEE arithmetic)."""
    freqs = positions[:, None].to(torch.float32) * weights.inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = (emb.cos() * weights.rope_scaling).to(dtype)[:, None, :]
    sin = (emb.sin() * weights.rope_scaling).to(dtype)[:, None, :]
    half = sin.shape[-1] // 2
    sin[..., :half] = -sin[..., :half]
    return cos, sin


def attention(
    q, k, v, layer_cache: torch.Tensor, meta: AttentionMetadata, scale: float, out: torch.Tensor
) -> None:
    """Write this step's KV into the cache, then attend; results go into `out` [T, H, D]."""
    k_cache, v_cache = layer_cache[0], layer_cache[1]
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, meta.slot_mapping, k)
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, meta.slot_mapping, v)
    nd = meta.num_decode
    if nd:
        assert meta.decode_block_tables is not None and meta.decode_context_lens is not None
        out[:nd] = paged_decode_attention(
            q[:nd], k_cache, v_cache, meta.decode_block_tables, meta.decode_context_lens, scale
        )
    for span in meta.prefills:
        s, n = span.token_start, span.num_tokens
        if span.start_pos == 0:
            ks, vs = k[s : s + n], v[s : s + n]
        else:
            total = span.start_pos + n
            ks = gather_kv(k_cache, span.block_table, total)
            vs = gather_kv(v_cache, span.block_table, total)
        out[s : s + n] = causal_attention(q[s : s + n], ks, vs, scale)


def forward(
    w: ModelWeights,
    g: ModelGeometry,
    kv_cache: torch.Tensor,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    meta: AttentionMetadata,
    logits_indices: torch.Tensor,
    layer_done=None,
) -> torch.Tensor:
    """Run the flat batch through the model; float32 logits for the rows in `logits_indices`.

    kv_cache: [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]. `layer_done`
    (optional) is called with the layer index once that layer's KV is in the cache, so a KV
    sender can ship it while later layers compute.
    """
    t = input_ids.shape[0]
    h_, kvh, d = g.num_heads, g.num_kv_heads, g.head_dim
    scale = d**-0.5
    hidden = F.embedding(input_ids, w.embed)
    cos, sin = rope_cos_sin(w, positions, hidden.dtype)
    attn_out = torch.empty(t, h_, d, dtype=hidden.dtype)
    for i, lw in enumerate(w.layers):
        residual = hidden
        x = rms_norm(hidden, lw.input_norm, g.rms_norm_eps)
        qkv = linear(x, lw.qkv, lw.qkv_bias)
        qk, v = qkv.split([(h_ + kvh) * d, kvh * d], dim=-1)
        qk, v = qk.view(t, h_ + kvh, d), v.view(t, kvh, d)
        if lw.q_norm is not None and lw.k_norm is not None:
            qk = torch.cat(
                [
                    rms_norm(qk[:, :h_], lw.q_norm, g.rms_norm_eps),
                    rms_norm(qk[:, h_:], lw.k_norm, g.rms_norm_eps),
                ],
                dim=1,
            )
        # q and k sit side by side in the projection: rotate both heads' groups at once.
        qk = qk * cos + torch.roll(qk, d // 2, dims=-1) * sin
        q, k = qk[:, :h_], qk[:, h_:]
        attention(q, k, v, kv_cache[i], meta, scale, attn_out)
        if layer_done is not None:
            layer_done(i)
        hidden = residual + linear(attn_out.view(t, h_ * d), lw.o_proj)
        residual = hidden
        x = rms_norm(hidden, lw.post_norm, g.rms_norm_eps)
        gate, up = linear(x, lw.gate_up).chunk(2, dim=-1)
        hidden = residual + linear(F.silu(gate) * up, lw.down)
    last = rms_norm(hidden.index_select(0, logits_indices), w.norm, g.rms_norm_eps)
    return linear(last, w.lm_head).float()
