// RMSNorm with residual add and in-place rotary for CPUs: the kernels of layer_ops.cpp's ops
// and of the decode layers (decoder.cpp). Arithmetic contracts: see layer_ops.cpp.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>

namespace tandem_cpu {

template <typename T>
void add_rms_norm_rows(const T* x, const T* res, const T* w, T* normed, T* new_res,
                       int64_t rows, int64_t width, int64_t x_stride, float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * x_stride;
      T* nr = normed + r * width;
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
  at::parallel_for(0, tokens, 8, [&](int64_t t0, int64_t t1) {
    T tmp[1024];
    for (int64_t t = t0; t < t1; ++t) {
      const T* c = cos + t * dim;
      const T* s = sin + t * dim;
      for (int64_t h = 0; h < heads; ++h) {
        T* x = qk + t * s_tok + h * s_head;
        for (int64_t i = 0; i < dim; ++i) tmp[i] = x[i];
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

}  // namespace tandem_cpu
