// The small per-layer ops of a decoder layer for CPUs, registered in torch.ops.tandem_cpu:
//   fused_add_rms_norm: new_residual = residual + x (rounded to x's dtype, as an unfused add),
//                       normed = rms_norm(new_residual) * weight, statistics in float32;
//   rotary_:            q and k heads rotated in place with the sign-folded sin,
//                       x * cos + roll(x, dim / 2) * sin, each product and the sum rounded to
//                       x's dtype exactly as the torch reference does (bit-identical);
//   silu_mul:           silu(gate) * up over the stacked gate_up projection, one pass.
// At decode batch sizes each torch op of these costs more in dispatch and temporaries than in
// arithmetic (an RMSNorm of one 576-wide bf16 row took ~18 us through F.rms_norm); one call
// here does a whole op on rows split across ATen's thread pool.
#include <torch/library.h>

#include "layer_ops.h"

namespace {

using namespace tandem_cpu;

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

// gate_up: [rows, 2 * inter] with a contiguous last dim; returns [rows, inter].
at::Tensor silu_mul(const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.stride(1) == 1 && gate_up.size(1) % 2 == 0,
              "gate_up must be [rows, 2 * intermediate], last dim contiguous");
  const int64_t rows = gate_up.size(0), inter = gate_up.size(1) / 2;
  at::Tensor out = at::empty({rows, inter}, gate_up.options());
  auto run = [&](auto tag) {
    using T = decltype(tag);
    silu_mul_rows<T>(gate_up.data_ptr<T>(), out.data_ptr<T>(), rows, inter, gate_up.stride(0));
  };
  switch (gate_up.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kBFloat16: run(c10::BFloat16{}); break;
    case at::kHalf: run(c10::Half{}); break;
    default: TORCH_CHECK(false, "silu_mul: float32, bfloat16 or float16 only");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tandem_cpu, m) {
  m.def("fused_add_rms_norm(Tensor x, Tensor? residual, Tensor weight, float eps, "
        "Tensor(a!) normed, Tensor(b!) new_residual) -> ()");
  m.def("rotary_(Tensor(a!) qk, Tensor cos, Tensor sin) -> ()");
  m.def("silu_mul(Tensor gate_up) -> Tensor");
}

TORCH_LIBRARY_IMPL(tandem_cpu, CPU, m) {
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);
  m.impl("rotary_", &rotary_);
  m.impl("silu_mul", &silu_mul);
}
