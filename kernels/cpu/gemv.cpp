// y = x @ w.T (+ bias) for a few rows of x in bfloat16, registered as
// torch.ops.tandem_cpu.linear_small_batch. Decode at batch 1..4 is a matrix-vector product that
// reads every weight once: its speed is the memory bandwidth. oneDNN gets that bandwidth on
// large matrices but spends ~11 us per call in dispatch and thread start, and a decoder layer
// makes four such calls on 1-7 MB matrices (SmolLM2: 121 per token, ~1.4 ms of a ~9 ms token).
// Here each thread streams a contiguous run of weight rows, 8 at a time, with AVX512-BF16 dot
// products (vdpbf16ps) into float32 accumulators, and every row of x reuses the rows in L1;
// the bias joins in float32 and the sum rounds once to bfloat16.
#include <torch/library.h>

#include "gemv.h"

namespace {

using namespace tandem_cpu;

at::Tensor linear_small_batch(const at::Tensor& x, const at::Tensor& w,
                              const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(tandem_cpu::gemv_available(), "linear_small_batch needs a CPU with AVX512-BF16");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16,
              "linear_small_batch: bfloat16 only");
  TORCH_CHECK(x.dim() == 2 && x.size(0) <= kMaxRows && x.stride(1) == 1,
              "x must be [<= 4, K] with a contiguous last dim");
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.size(1) == x.size(1) && x.size(1) % 32 == 0,
              "w must be a contiguous [N, K] with K = x's K, a multiple of 32");
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias)
    TORCH_CHECK(bias->scalar_type() == at::kBFloat16 && bias->is_contiguous() &&
                    bias->numel() == w.size(0), "bias must be a bfloat16 [N]");
  const int64_t m = x.size(0), n = w.size(0), k = w.size(1);
  at::Tensor out = at::empty({m, n}, x.options());
  gemv_bf16(x.data_ptr<at::BFloat16>(), m, x.stride(0), w.data_ptr<at::BFloat16>(), n, k,
            has_bias ? bias->data_ptr<at::BFloat16>() : nullptr, out.data_ptr<at::BFloat16>());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tandem_cpu, m) {
  m.def("linear_small_batch(Tensor x, Tensor w, Tensor? bias) -> Tensor");
  m.def("has_avx512_bf16() -> bool", [] { return tandem_cpu::gemv_available(); });
}

TORCH_LIBRARY_IMPL(tandem_cpu, CPU, m) {
  m.impl("linear_small_batch", &linear_small_batch);
}
