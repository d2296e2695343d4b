// All decoder layers of a small decode-only batch in one call, registered as
// torch.ops.tandem_cpu.decode_layers (bfloat16, 1..kMaxRows sequences, one new token each).
//
// After the small-batch GEMV, a single-stream decode step spent ~2 ms of its ~10 ms in Python
// and the dispatcher: ~15 torch calls per layer, each a few microseconds of argument checks,
// temporaries and views around work that takes less. This runs the same kernels in the same
// order (RMSNorm + residual, qkv GEMV, q/k norms, rotary, KV write, paged attention, o GEMV,
// RMSNorm + residual, gate_up GEMV, SiLU * up, down GEMV) over buffers allocated once, so the
// result equals runtime.engine.fused_forward's layer loop on the same kernels (the SiLU's exp
// may differ from torch's in the last float bit).
#include <torch/library.h>

#include <cmath>
#include <cstring>

#include "attention.h"
#include "gemv.h"
#include "layer_ops.h"

namespace {

using namespace tandem_cpu;
using bf16 = at::BFloat16;

const bf16* ptr(const at::Tensor& t) { return t.data_ptr<bf16>(); }

void check_layer_weights(const at::TensorList& ws, int64_t layers, int64_t n, int64_t k,
                         const char* name) {
  TORCH_CHECK(static_cast<int64_t>(ws.size()) == layers, name, ": one tensor per layer");
  for (const auto& w : ws)
    TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.is_contiguous() && w.dim() == 2 &&
                    w.size(0) == n && w.size(1) == k,
                name, " must be contiguous bfloat16 [", n, ", ", k, "]");
}

void check_vectors(const at::TensorList& ws, int64_t layers, int64_t n, const char* name,
                   bool optional) {
  if (optional && ws.empty()) return;
  TORCH_CHECK(static_cast<int64_t>(ws.size()) == layers, name, ": one tensor per layer");
  for (const auto& w : ws)
    TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.is_contiguous() && w.numel() == n,
                name, " must be contiguous bfloat16 [", n, "]");
}

std::tuple<at::Tensor, at::Tensor> decode_layers(
    const at::Tensor& hidden_in, at::TensorList input_norm, at::TensorList qkv,
    at::TensorList qkv_bias, at::TensorList q_norm, at::TensorList k_norm,
    at::TensorList o_proj, at::TensorList post_norm, at::TensorList gate_up,
    at::TensorList down, at::Tensor& kv_cache, const at::Tensor& cos, const at::Tensor& sin,
    const at::Tensor& slot_mapping, const at::Tensor& block_tables,
    const at::Tensor& context_lens, int64_t num_heads, int64_t num_kv_heads, double eps,
    double scale) {
  TORCH_CHECK(gemv_available(), "decode_layers needs a CPU with AVX512-BF16");
  const int64_t m = hidden_in.size(0), hd = hidden_in.size(1), layers = input_norm.size();
  TORCH_CHECK(hidden_in.scalar_type() == at::kBFloat16 && hidden_in.dim() == 2 && m >= 1 &&
                  m <= kMaxRows, "hidden must be bfloat16 [1..4, hidden]");
  TORCH_CHECK(kv_cache.scalar_type() == at::kBFloat16 && kv_cache.is_contiguous() &&
                  kv_cache.dim() == 6 && kv_cache.size(0) == layers && kv_cache.size(1) == 2,
              "kv_cache must be contiguous bfloat16 [layers, 2, blocks, block_size, kv, dim]");
  const int64_t num_blocks = kv_cache.size(2), block_size = kv_cache.size(3);
  const int64_t d = kv_cache.size(5), h = num_heads, kvh = num_kv_heads;
  TORCH_CHECK(kv_cache.size(4) == kvh && h % kvh == 0, "heads must be a multiple of kv heads");
  const int64_t qkv_w = (h + 2 * kvh) * d;
  TORCH_CHECK(layers > 0 && static_cast<int64_t>(gate_up.size()) == layers &&
                  gate_up[0].dim() == 2, "gate_up: one [2 * intermediate, hidden] per layer");
  const int64_t inter2 = gate_up[0].size(0), inter = inter2 / 2;
  TORCH_CHECK(hd % 32 == 0 && (h * d) % 32 == 0 && inter % 32 == 0,
              "hidden, heads * head_dim and intermediate sizes must be multiples of 32");
  check_vectors(input_norm, layers, hd, "input_norm", false);
  check_vectors(post_norm, layers, hd, "post_norm", false);
  check_layer_weights(qkv, layers, qkv_w, hd, "qkv");
  check_vectors(qkv_bias, layers, qkv_w, "qkv_bias", true);
  check_vectors(q_norm, layers, d, "q_norm", true);
  check_vectors(k_norm, layers, d, "k_norm", true);
  TORCH_CHECK(q_norm.size() == k_norm.size(), "q_norm and k_norm come together");
  check_layer_weights(o_proj, layers, hd, h * d, "o_proj");
  check_layer_weights(gate_up, layers, inter2, hd, "gate_up");
  check_layer_weights(down, layers, hd, inter, "down");
  TORCH_CHECK(cos.scalar_type() == at::kBFloat16 && cos.is_contiguous() && sin.is_contiguous() &&
                  cos.numel() == m * d && sin.numel() == m * d, "cos and sin must be [m, 1, dim]");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.numel() == m &&
                  block_tables.scalar_type() == at::kLong && block_tables.dim() == 2 &&
                  block_tables.size(0) == m && context_lens.scalar_type() == at::kLong &&
                  context_lens.numel() == m, "slot_mapping, block_tables, context_lens: int64");
  at::Tensor tables = block_tables.contiguous(), lens = context_lens.contiguous();
  at::Tensor slots = slot_mapping.contiguous();
  const int64_t* tb = tables.data_ptr<int64_t>();
  const int64_t* ln = lens.data_ptr<int64_t>();
  const int64_t* sl = slots.data_ptr<int64_t>();
  const int64_t max_blocks = tables.size(1);
  for (int64_t b = 0; b < m; ++b) {
    TORCH_CHECK(ln[b] >= 1 && ln[b] <= max_blocks * block_size, "context_lens[", b, "]=", ln[b],
                " outside [1, ", max_blocks * block_size, "]");
    TORCH_CHECK(sl[b] >= 0 && sl[b] < num_blocks * block_size, "slot_mapping[", b, "]=", sl[b],
                " is not a slot of the cache");
    for (int64_t i = 0; i < (ln[b] + block_size - 1) / block_size; ++i)
      TORCH_CHECK(tb[b * max_blocks + i] >= 0 && tb[b * max_blocks + i] < num_blocks,
                  "block_tables[", b, "][", i, "]=", tb[b * max_blocks + i],
                  " is not a block of the cache");
  }

  auto opts = hidden_in.options();
  at::Tensor hidden = hidden_in.contiguous().clone(), residual = at::empty({m, hd}, opts);
  at::Tensor x = at::empty({m, hd}, opts), qkv_buf = at::empty({m, qkv_w}, opts);
  at::Tensor attn = at::empty({m, h * d}, opts), o = at::empty({m, hd}, opts);
  at::Tensor gu = at::empty({m, inter2}, opts), act = at::empty({m, inter}, opts);
  bf16 *hp = hidden.data_ptr<bf16>(), *rp = residual.data_ptr<bf16>(), *xp = x.data_ptr<bf16>();
  bf16 *qp = qkv_buf.data_ptr<bf16>(), *ap = attn.data_ptr<bf16>(), *op = o.data_ptr<bf16>();
  bf16 *gp = gu.data_ptr<bf16>(), *actp = act.data_ptr<bf16>();
  bf16* cache = kv_cache.data_ptr<bf16>();
  const int64_t layer_stride = kv_cache.stride(0), kv_stride = kv_cache.stride(1);
  const int64_t token_elems = kvh * d;
  Geometry g{m, h, d, kvh, h / kvh, block_size, max_blocks, qkv_w, d, h * d, d,
             kv_cache.stride(2), kv_cache.stride(3), kv_cache.stride(4)};
  const float e = static_cast<float>(eps), s = static_cast<float>(scale);

  for (int64_t i = 0; i < layers; ++i) {
    if (i == 0) {   // the embedding is the first residual
      add_rms_norm_rows<bf16>(hp, nullptr, ptr(input_norm[i]), xp, nullptr, m, hd, hd, e);
      std::memcpy(rp, hp, sizeof(bf16) * m * hd);
    } else {
      add_rms_norm_rows<bf16>(hp, rp, ptr(input_norm[i]), xp, rp, m, hd, hd, e);
    }
    gemv_bf16(xp, m, hd, ptr(qkv[i]), qkv_w, hd, qkv_bias.empty() ? nullptr : ptr(qkv_bias[i]),
              qp);
    if (!q_norm.empty()) {   // Qwen3: per-head RMSNorm of q and k, in place
      for (int64_t b = 0; b < m; ++b) {
        bf16* row = qp + b * qkv_w;
        add_rms_norm_rows<bf16>(row, nullptr, ptr(q_norm[i]), row, nullptr, h, d, d, e);
        add_rms_norm_rows<bf16>(row + h * d, nullptr, ptr(k_norm[i]), row + h * d, nullptr, kvh,
                                d, d, e);
      }
    }
    rotary_rows<bf16>(qp, ptr(cos), ptr(sin), m, h + kvh, d, qkv_w, d);
    bf16* k_layer = cache + i * layer_stride;
    bf16* v_layer = k_layer + kv_stride;
    for (int64_t b = 0; b < m; ++b) {   // the new token's KV, then attention reads it back
      std::memcpy(k_layer + sl[b] * token_elems, qp + b * qkv_w + h * d,
                  sizeof(bf16) * token_elems);
      std::memcpy(v_layer + sl[b] * token_elems, qp + b * qkv_w + (h + kvh) * d,
                  sizeof(bf16) * token_elems);
    }
    attend_all<bf16>(g, qp, k_layer, v_layer, tb, ln, s, ap);
    gemv_bf16(ap, m, h * d, ptr(o_proj[i]), hd, h * d, nullptr, op);
    add_rms_norm_rows<bf16>(op, rp, ptr(post_norm[i]), xp, rp, m, hd, hd, e);
    gemv_bf16(xp, m, hd, ptr(gate_up[i]), inter2, hd, nullptr, gp);
    silu_mul_rows<bf16>(gp, actp, m, inter, inter2);
    gemv_bf16(actp, m, inter, ptr(down[i]), hd, inter, nullptr, hp);
  }
  return {hidden, residual};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tandem_cpu, m) {
  m.def("decode_layers(Tensor hidden, Tensor[] input_norm, Tensor[] qkv, Tensor[] qkv_bias, "
        "Tensor[] q_norm, Tensor[] k_norm, Tensor[] o_proj, Tensor[] post_norm, "
        "Tensor[] gate_up, Tensor[] down, Tensor(a!) kv_cache, Tensor cos, Tensor sin, "
        "Tensor slot_mapping, Tensor block_tables, Tensor context_lens, int num_heads, "
        "int num_kv_heads, float eps, float scale) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tandem_cpu, CPU, m) {
  m.impl("decode_layers", &decode_layers);
}
