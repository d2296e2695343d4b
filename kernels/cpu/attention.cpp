// Registers torch.ops.tandem_cpu.paged_decode_attention (the kernel: attention.h).
#include <torch/library.h>

#include "attention.h"

namespace {

using namespace tandem_cpu;

void paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& block_tables,
                            const at::Tensor& context_lens, double scale, at::Tensor& out) {
  // Shapes and dtypes are checked in Python (kernels.attention); these guard the memory.
  TORCH_CHECK(q.device().is_cpu() && k_cache.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(q.stride(2) == 1 && out.stride(2) == 1 && k_cache.stride(3) == 1 &&
                  k_cache.strides() == v_cache.strides(),
              "head_dim must be contiguous and k/v caches must share strides");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && context_lens.scalar_type() == at::kLong,
              "block_tables and context_lens must be int64");
  at::Tensor tables = block_tables.contiguous(), lens = context_lens.contiguous();
  Geometry g{q.size(0), q.size(1), q.size(2), k_cache.size(2), q.size(1) / k_cache.size(2),
             k_cache.size(1), tables.size(1), q.stride(0), q.stride(1), out.stride(0),
             out.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2)};
  const int64_t* tb = tables.data_ptr<int64_t>();
  const int64_t* ln = lens.data_ptr<int64_t>();
  const int64_t num_blocks = k_cache.size(0);
  for (int64_t b = 0; b < g.batch; ++b) {
    TORCH_CHECK(ln[b] >= 1 && ln[b] <= g.max_blocks * g.block_size, "context_lens[", b, "]=",
                ln[b], " outside [1, ", g.max_blocks * g.block_size, "]");
    for (int64_t i = 0; i < (ln[b] + g.block_size - 1) / g.block_size; ++i)
      TORCH_CHECK(tb[b * g.max_blocks + i] >= 0 && tb[b * g.max_blocks + i] < num_blocks,
                  "block_tables[", b, "][", i, "]=", tb[b * g.max_blocks + i],
                  " is not a block of the cache");
  }
  const float s = static_cast<float>(scale);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    attend_all<T>(g, q.data_ptr<T>(), k_cache.data_ptr<T>(), v_cache.data_ptr<T>(), tb, ln, s,
                  out.data_ptr<T>());
  };
  switch (q.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kBFloat16: run(c10::BFloat16{}); break;
    case at::kHalf: run(c10::Half{}); break;
    default: TORCH_CHECK(false, "paged_decode_attention: float32, bfloat16 or float16 only");
  }
}

}  // namespace

TORCH_LIBRARY(tandem_cpu, m) {
  m.def("paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
        "Tensor context_lens, float scale, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(tandem_cpu, CPU, m) {
  m.impl("paged_decode_attention", &paged_decode_attention);
}
