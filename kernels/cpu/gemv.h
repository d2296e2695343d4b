// The small-batch bfloat16 matrix-vector kernel (see gemv.cpp for why it exists).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

namespace tandem_cpu {

constexpr int64_t kMaxRows = 4;

inline bool gemv_available() {
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

// out[m, n] = x[m, :] . w[n, :] (+ bias[n]) for m < rows <= kMaxRows; w contiguous [n, k],
// k a multiple of 32. Needs gemv_available().
inline void gemv_bf16(const at::BFloat16* x, int64_t rows, int64_t x_stride, const at::BFloat16* w,
                      int64_t n, int64_t k, const at::BFloat16* bias, at::BFloat16* out) {
#if defined(__AVX512BF16__)
  const auto* xp = reinterpret_cast<const uint16_t*>(x);
  const auto* wp = reinterpret_cast<const uint16_t*>(w);
  // Tasks of 8 rows; at least ~64 KB of weights per thread start, so small matrices stay on
  // one thread instead of paying a wake-up that costs more than they take.
  const int64_t tasks = n / 8, grain = std::max<int64_t>(1, (64 << 10) / (8 * k * 2));
  at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      rows_dot<8>(xp, rows, x_stride, wp + t * 8 * k, k, bias ? bias + t * 8 : nullptr,
                  out + t * 8, n);
  });
  for (int64_t row = tasks * 8; row < n; ++row)
    rows_dot<1>(xp, rows, x_stride, wp + row * k, k, bias ? bias + row : nullptr, out + row, n);
#endif
}

}  // namespace tandem_cpu
