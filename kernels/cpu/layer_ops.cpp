// The small per-layer ops of a decoder layer for CPUs, registered in torch.ops.tandem_cpu:
//   fused_add_rms_norm: new_residual = residual + x (rounded to x's dtype, as an unfused add),
//                       normed = rms_norm(new_residual) * weight, statistics in float32;
//   rotary_:            q and k heads rotated in place with the sign-folded sin,
//                       x * cos + roll(x, dim / 2) * sin, each product and the sum rounded to
//                       x's dtype exactly as the torch reference does (bit-identical).
// At decode batch sizes each torch op of these costs more in dispatch and temporaries than in
// arithmetic (an RMSNorm of one 576-wide bf16 row took ~18 us through F.rms_norm); one call
// here does a whole op on rows split across ATen's thread pool.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

namespace {

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

// x: [rows, width] with a contiguous last dim; residual (optional) and the outputs contiguous.
void fused_add_rms_norm(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                        const at::Tensor& weight, double eps, at::Tensor& normed,
                        at::Tensor& new_residual) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x must be [rows, width], last dim contiguous");
  TORCH_CHECK(weight.is_contiguous() && weight.numel() == x.size(1), "weight must be [width]");
  TORCH_CHECK(normed.is_contiguous() && normed.sizes() == x.sizes(), "normed must match x");
  const bool has_res = residual.has_value() && residual->defined();
  if (has_res)
    TORCH_CHECK(residual->is_contiguous() && residual->sizes() == x.sizes() &&
                    new_residual.is_contiguous() && new_residual.sizes() == x.sizes(),
                "residual and new_residual must match x, contiguous");
  const float e = static_cast<float>(eps);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    add_rms_norm_rows<T>(x.data_ptr<T>(), has_res ? residual->data_ptr<T>() : nullptr,
                         weight.data_ptr<T>(), normed.data_ptr<T>(),
                         has_res ? new_residual.data_ptr<T>() : nullptr, x.size(0), x.size(1),
                         x.stride(0), e);
  };
  switch (x.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kBFloat16: run(c10::BFloat16{}); break;
    case at::kHalf: run(c10::Half{}); break;
    default: TORCH_CHECK(false, "fused_add_rms_norm: float32, bfloat16 or float16 only");
  }
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

// qk: [T, heads, dim], any strides with a contiguous last dim; cos, sin: [T, 1, dim] contiguous.
void rotary_(at::Tensor& qk, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(qk.dim() == 3 && qk.stride(2) == 1, "qk must be [T, heads, dim], dim contiguous");
  TORCH_CHECK(qk.size(2) % 2 == 0 && qk.size(2) <= 1024, "head_dim must be even and <= 1024");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.numel() == qk.size(0) * qk.size(2)
                  && sin.numel() == cos.numel(), "cos and sin must be [T, 1, dim], contiguous");
  auto run = [&](auto tag) {
    using T = decltype(tag);
    rotary_rows<T>(qk.data_ptr<T>(), cos.data_ptr<T>(), sin.data_ptr<T>(), qk.size(0),
                   qk.size(1), qk.size(2), qk.stride(0), qk.stride(1));
  };
  switch (qk.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kBFloat16: run(c10::BFloat16{}); break;
    case at::kHalf: run(c10::Half{}); break;
    default: TORCH_CHECK(false, "rotary_: float32, bfloat16 or float16 only");
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tandem_cpu, m) {
  m.def("fused_add_rms_norm(Tensor x, Tensor? residual, Tensor weight, float eps, "
        "Tensor(a!) normed, Tensor(b!) new_residual) -> ()");
  m.def("rotary_(Tensor(a!) qk, Tensor cos, Tensor sin) -> ()");
}

TORCH_LIBRARY_IMPL(tandem_cpu, CPU, m) {
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);
  m.impl("rotary_", &rotary_);
}
