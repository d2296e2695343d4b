// y = x @ w.T (+ bias) for a few rows of x in bfloat16, registered as
// torch.ops.tandem_cpu.linear_small_batch. Decode at batch 1..4 is a matrix-vector product that
// reads every weight once: its speed is the memory bandwidth. oneDNN gets that bandwidth on
// large matrices but spends ~11 us per call in dispatch and thread start, and a decoder layer
// makes four such calls on 1-7 MB matrices (SmolLM2: 121 per token, ~1.4 ms of a ~9 ms token).
// Here each thread streams a contiguous run of weight rows, 8 at a time, with AVX512-BF16 dot
// products (vdpbf16ps) into float32 accumulators, and every row of x reuses the rows in L1;
// the bias joins in float32 and the sum rounds once to bfloat16.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kMaxRows = 4;

bool available() {
#if defined(__AVX512BF16__)
  return true;
#else
  return false;
#endif
}

#if defined(__AVX512BF16__)
template <int R>
inline void rows_dot(const uint16_t* x, int64_t m_rows, int64_t x_stride, const uint16_t* w,
                     int64_t k, const at::BFloat16* bias, at::BFloat16* out, int64_t out_stride) {
  for (int64_t m = 0; m < m_rows; ++m) {
    const uint16_t* xm = x + m * x_stride;
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 32) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xm + i);
      for (int r = 0; r < R; ++r)
        acc[r] = _mm512_dpbf16_ps(acc[r], xv, (__m512bh)_mm512_loadu_si512(w + r * k + i));
    }
    for (int r = 0; r < R; ++r) {
      const float b = bias != nullptr ? static_cast<float>(bias[r]) : 0.f;
      out[m * out_stride + r] = static_cast<at::BFloat16>(_mm512_reduce_add_ps(acc[r]) + b);
    }
  }
}
#endif

at::Tensor linear_small_batch(const at::Tensor& x, const at::Tensor& w,
                              const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(available(), "linear_small_batch needs a CPU with AVX512-BF16");
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
#if defined(__AVX512BF16__)
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  const at::BFloat16* bp = has_bias ? bias->data_ptr<at::BFloat16>() : nullptr;
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  // Tasks of 8 rows; at least ~64 KB of weights per thread start, so small matrices stay on
  // one thread instead of paying a wake-up that costs more than they take.
  const int64_t tasks = n / 8, grain = std::max<int64_t>(1, (64 << 10) / (8 * k * 2));
  at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      rows_dot<8>(xp, m, x.stride(0), wp + t * 8 * k, k, bp ? bp + t * 8 : nullptr, op + t * 8, n);
  });
  for (int64_t row = tasks * 8; row < n; ++row)
    rows_dot<1>(xp, m, x.stride(0), wp + row * k, k, bp ? bp + row : nullptr, op + row, n);
#endif
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tandem_cpu, m) {
  m.def("linear_small_batch(Tensor x, Tensor w, Tensor? bias) -> Tensor");
  m.def("has_linear_small_batch() -> bool", [] { return available(); });
}

TORCH_LIBRARY_IMPL(tandem_cpu, CPU, m) {
  m.impl("linear_small_batch", &linear_small_batch);
}
