// RMSNorm with residual add and in-place rotary for CPUs: the kernels of layer_ops.cpp's ops
// and of the decode layers (decoder.cpp). Arithmetic contracts: see layer_ops.cpp.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "vec.h"

namespace tandem_cpu {

#if defined(__AVX512F__)
// One row of add_rms_norm_rows, 16 lanes at a time (width % 16 == 0). The residual sum rounds
// per element as the scalar code does; the sum of squares is accumulated in another order, so
// the statistics differ from the scalar path's in the last float32 bits.
template <typename T>
inline void add_rms_norm_row16(const T* xr, const T* rr, const T* w, T* nr, T* out_r,
                               int64_t width, float eps) {
  __m512 sq = _mm512_setzero_ps();
  const T* src = xr;
  if (rr != nullptr) {
    for (int64_t i = 0; i < width; i += 16) {
      __m512 v = round16<T>(_mm512_add_ps(load16(xr + i), load16(rr + i)));
      store16(out_r + i, v);
      sq = _mm512_fmadd_ps(v, v, sq);
    }
    src = out_r;
  } else {
    for (int64_t i = 0; i < width; i += 16) {
      __m512 v = load16(xr + i);
      sq = _mm512_fmadd_ps(v, v, sq);
    }
  }
  const __m512 inv = _mm512_set1_ps(
      1.f / std::sqrt(_mm512_reduce_add_ps(sq) / static_cast<float>(width) + eps));
  for (int64_t i = 0; i < width; i += 16)
    store16(nr + i, _mm512_mul_ps(_mm512_mul_ps(load16(src + i), inv), load16(w + i)));
}
#endif

template <typename T>
void add_rms_norm_rows(const T* x, const T* res, const T* w, T* normed, T* new_res,
                       int64_t rows, int64_t width, int64_t x_stride, float eps) {
  // Grains of ~32K elements: smaller calls run inline, a thread wake-up costs more than them.
  const int64_t grain = std::max<int64_t>(1, (32 << 10) / width);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * x_stride;
      T* nr = normed + r * width;
#if defined(__AVX512F__)
      if (width % 16 == 0) {
        add_rms_norm_row16<T>(xr, res ? res + r * width : nullptr, w, nr,
                              res ? new_res + r * width : nullptr, width, eps);
        continue;
      }
#endif
      float sq = 0.f;
      if (res != nullptr) {
        const T* rr = res + r * width;
        T* out_r = new_res + r * width;
        for (int64_t i = 0; i < width; ++i) {
          out_r[i] = static_cast<T>(static_cast<float>(xr[i]) + static_cast<float>(rr[i]));
          const float v = static_cast<float>(out_r[i]);
          sq += v * v;
        }
        xr = out_r;
      } else {
        for (int64_t i = 0; i < width; ++i) {
          const float v = static_cast<float>(xr[i]);
          sq += v * v;
        }
      }
      const float inv = 1.f / std::sqrt(sq / static_cast<float>(width) + eps);
      for (int64_t i = 0; i < width; ++i)
        nr[i] = static_cast<T>(static_cast<float>(xr[i]) * inv * static_cast<float>(w[i]));
    }
  });
}

template <typename T>
void rotary_rows(T* qk, const T* cos, const T* sin, int64_t tokens, int64_t heads, int64_t dim,
                 int64_t s_tok, int64_t s_head) {
  const int64_t half = dim / 2;
  at::parallel_for(0, tokens, std::max<int64_t>(1, (32 << 10) / (heads * dim)),
                   [&](int64_t t0, int64_t t1) {
    T tmp[1024];
    for (int64_t t = t0; t < t1; ++t) {
      const T* c = cos + t * dim;
      const T* s = sin + t * dim;
      for (int64_t h = 0; h < heads; ++h) {
        T* x = qk + t * s_tok + h * s_head;
        for (int64_t i = 0; i < dim; ++i) tmp[i] = x[i];
#if defined(__AVX512F__)
        if (half % 16 == 0) {   // each product and the sum rounded to T, as the scalar code
          for (int64_t i = 0; i < dim; i += 16) {
            __m512 a = round16<T>(_mm512_mul_ps(load16(tmp + i), load16(c + i)));
            __m512 b = round16<T>(_mm512_mul_ps(load16(tmp + (i + half) % dim), load16(s + i)));
            store16(x + i, _mm512_add_ps(a, b));
          }
          continue;
        }
#endif
        for (int64_t i = 0; i < dim; ++i) {
          // roll by half: element i meets element (i + half) mod dim
          const T a = static_cast<T>(static_cast<float>(tmp[i]) * static_cast<float>(c[i]));
          const T b = static_cast<T>(static_cast<float>(tmp[(i + half) % dim]) *
                                     static_cast<float>(s[i]));
          x[i] = static_cast<T>(static_cast<float>(a) + static_cast<float>(b));
        }
      }
    }
  });
}

// out[r, j] = silu(gate_up[r, j]) * gate_up[r, inter + j] for j < inter, the SiLU rounded to T
// before the product as F.silu(gate) * up rounds (its exp may differ in the last float bit).
template <typename T>
void silu_mul_rows(const T* gate_up, T* out, int64_t rows, int64_t inter, int64_t in_stride) {
  const int64_t grain = std::max<int64_t>(1, (32 << 10) / inter);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* gate = gate_up + r * in_stride;
      const T* up = gate + inter;
      T* o = out + r * inter;
      int64_t j = 0;
#if defined(__AVX512F__)
      const __m512 one = _mm512_set1_ps(1.f);
      for (; j + 16 <= inter; j += 16) {
        __m512 g = load16(gate + j);
        __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
        __m512 silu = round16<T>(_mm512_div_ps(g, _mm512_add_ps(one, e)));
        store16(o + j, _mm512_mul_ps(silu, load16(up + j)));
      }
#endif
      for (; j < inter; ++j) {
        const float g = static_cast<float>(gate[j]);
        const T silu = static_cast<T>(g / (1.f + std::exp(-g)));
        o[j] = static_cast<T>(static_cast<float>(silu) * static_cast<float>(up[j]));
      }
    }
  });
}

}  // namespace tandem_cpu
