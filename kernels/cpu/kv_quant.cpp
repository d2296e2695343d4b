// int8 / fp8 (e4m3) wire quantization of KV for CPUs, registered as
// torch.ops.tandem_cpu.quantize_kv / dequantize_kv: bit-identical to kernels/kv_quant.py's
// torch reference (same float32 divisions and multiplications, round-half-to-even, the same
// clamps; float8 conversions through c10's, dequantized through a 256-entry table).
// The reference makes ~8 passes over the KV with temporaries; at a handoff's sizes that made
// int8 and fp8 handoffs slower than raw ones on a 2-core host, though they move half the bytes.
//
// Single-threaded, like kv_pack.cpp: the handoff calls these on its own sending or receiving
// thread, several at once when handoffs run concurrently, and each caller of at::parallel_for
// leads its own OpenMP team: 4 concurrent 1k-token int8 handoffs on 2 cores then had single
// chunks taking 30-49 ms to encode instead of 1-2, and moved 0.8 GB/s where raw moved 1.5.
#include <ATen/ATen.h>
#include <c10/util/Float8_e4m3fn.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "vec.h"

namespace {

#if defined(__AVX512F__)  // the vector paths below; without AVX-512 the scalar loops run
using tandem_cpu::load16;
#endif

template <typename T>
float absmax_row(const T* x, int64_t d) {
  int64_t i = 0;
  float m = 0.f;
#if defined(__AVX512F__)
  __m512 vm = _mm512_setzero_ps();
  for (; i + 16 <= d; i += 16) vm = _mm512_max_ps(vm, _mm512_abs_ps(load16(x + i)));
  m = _mm512_reduce_max_ps(vm);
#endif
  for (; i < d; ++i) m = std::max(m, std::fabs(static_cast<float>(x[i])));
  return m;
}

#if defined(__AVX512F__)
// 16 floats in [-448, 448] to float8_e4m3fn bits, rounding to nearest even as c10 does:
// normals round the float's mantissa to 3 bits (a carry moves into the exponent), values
// under 2^-6 become multiples of the subnormal step 2^-9.
inline __m128i e4m3_16(__m512 y) {
  const __m512i f = _mm512_castps_si512(y), one = _mm512_set1_epi32(1);
  const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(f, 24), _mm512_set1_epi32(0x80));
  const __m512i a = _mm512_and_si512(f, _mm512_set1_epi32(0x7fffffff));
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(a, 20), one);
  const __m512i u = _mm512_add_epi32(a, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7ffff)));
  const __m512i normal = _mm512_srli_epi32(_mm512_sub_epi32(u, _mm512_set1_epi32(120 << 23)), 20);
  const __m512 steps = _mm512_roundscale_ps(
      _mm512_mul_ps(_mm512_castsi512_ps(a), _mm512_set1_ps(512.f)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __mmask16 tiny = _mm512_cmplt_epi32_mask(a, _mm512_set1_epi32(0x3c800000));   // 2^-6
  const __m512i bits = _mm512_mask_mov_epi32(normal, tiny, _mm512_cvtps_epi32(steps));
  return _mm512_cvtepi32_epi8(_mm512_or_si512(bits, sign));
}
#endif

// x [T, H, D] contiguous -> q [T, H, D] (int8 or e4m3 bytes), scales [G, H] float32.
template <typename T>
void quantize(const T* x, int64_t t, int64_t h, int64_t d, int64_t group, bool fp8,
              uint8_t* q, float* scales) {
  const int64_t groups = (t + group - 1) / group;
  const float qmax = fp8 ? 448.f : 127.f;
  for (int64_t task = 0; task < groups * h; ++task) {
    const int64_t g = task / h, head = task % h;
    const int64_t t0 = g * group, t1 = std::min(t, t0 + group);
    float m = 0.f;
    for (int64_t tok = t0; tok < t1; ++tok)
      m = std::max(m, absmax_row(x + (tok * h + head) * d, d));
    const float scale = m / qmax;
    scales[g * h + head] = scale;
    const float safe = scale > 0.f ? scale : 1.f;
    for (int64_t tok = t0; tok < t1; ++tok) {
      const T* xr = x + (tok * h + head) * d;
      uint8_t* qr = q + (tok * h + head) * d;
      int64_t i = 0;
#if defined(__AVX512F__)
      const __m512 vs = _mm512_set1_ps(safe), lo = _mm512_set1_ps(-qmax),
                   hi = _mm512_set1_ps(qmax);
      for (; i + 16 <= d; i += 16) {
        __m512 y = _mm512_div_ps(load16(xr + i), vs);
        __m128i packed;
        if (fp8) {
          packed = e4m3_16(_mm512_min_ps(_mm512_max_ps(y, lo), hi));
        } else {
          y = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          y = _mm512_min_ps(_mm512_max_ps(y, lo), hi);
          packed = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(y));
        }
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qr + i), packed);
      }
#endif
      for (; i < d; ++i) {
        float y = static_cast<float>(xr[i]) / safe;
        if (fp8) {
          y = std::min(std::max(y, -qmax), qmax);
          qr[i] = c10::Float8_e4m3fn(y).x;
        } else {
          y = std::min(std::max(std::nearbyint(y), -qmax), qmax);
          qr[i] = static_cast<uint8_t>(static_cast<int8_t>(y));
        }
      }
    }
  }
}

const std::array<float, 256>& e4m3_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i)
      t[i] = static_cast<float>(
          c10::Float8_e4m3fn(static_cast<uint8_t>(i), c10::Float8_e4m3fn::from_bits()));
    return t;
  }();
  return table;
}

template <typename T>
void dequantize(const uint8_t* q, const float* scales, int64_t t, int64_t h, int64_t d,
                int64_t group, bool fp8, T* out) {
  const float* table = e4m3_table().data();
  for (int64_t row = 0; row < t * h; ++row) {
    const int64_t tok = row / h, head = row % h;
    const float scale = scales[(tok / group) * h + head];
    const uint8_t* qr = q + row * d;
    T* o = out + row * d;
    int64_t i = 0;
#if defined(__AVX512F__)
    const __m512 vs = _mm512_set1_ps(scale);
    for (; i + 16 <= d; i += 16) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qr + i));
      __m512 v = fp8 ? _mm512_i32gather_ps(_mm512_cvtepu8_epi32(bytes), table, 4)
                     : _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
      tandem_cpu::store16(o + i, _mm512_mul_ps(v, vs));
    }
#endif
    for (; i < d; ++i) {
      const float v = fp8 ? table[qr[i]] : static_cast<float>(static_cast<int8_t>(qr[i]));
      o[i] = static_cast<T>(v * scale);
    }
  }
}

void quantize_kv(const at::Tensor& x, bool fp8, int64_t group, at::Tensor& q,
                 at::Tensor& scales) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && q.is_contiguous() && q.sizes() == x.sizes() &&
                  q.element_size() == 1 && scales.is_contiguous() &&
                  scales.scalar_type() == at::kFloat && group >= 1 &&
                  scales.size(0) == (x.size(0) + group - 1) / group && scales.size(1) == x.size(1),
              "quantize_kv: contiguous x [T, H, D], q like x (1 byte), scales float32 [G, H]");
  const int64_t t = x.size(0), h = x.size(1), d = x.size(2);
  auto* qp = static_cast<uint8_t*>(q.data_ptr());
  float* sp = scales.data_ptr<float>();
  switch (x.scalar_type()) {
    case at::kFloat: quantize(x.data_ptr<float>(), t, h, d, group, fp8, qp, sp); break;
    case at::kBFloat16: quantize(x.data_ptr<c10::BFloat16>(), t, h, d, group, fp8, qp, sp); break;
    case at::kHalf: quantize(x.data_ptr<c10::Half>(), t, h, d, group, fp8, qp, sp); break;
    default: TORCH_CHECK(false, "quantize_kv: float32, bfloat16 or float16 only");
  }
}

void dequantize_kv(const at::Tensor& q, const at::Tensor& scales, bool fp8, int64_t group,
                   at::Tensor& out) {
  TORCH_CHECK(q.dim() == 3 && q.is_contiguous() && q.element_size() == 1 &&
                  out.is_contiguous() && out.sizes() == q.sizes() && scales.is_contiguous() &&
                  scales.scalar_type() == at::kFloat && group >= 1 &&
                  scales.size(0) == (q.size(0) + group - 1) / group && scales.size(1) == q.size(1),
              "dequantize_kv: contiguous q [T, H, D] (1 byte), out like q, scales float32 [G, H]");
  const int64_t t = q.size(0), h = q.size(1), d = q.size(2);
  const auto* qp = static_cast<const uint8_t*>(q.data_ptr());
  const float* sp = scales.data_ptr<float>();
  switch (out.scalar_type()) {
    case at::kFloat: dequantize(qp, sp, t, h, d, group, fp8, out.data_ptr<float>()); break;
    case at::kBFloat16: dequantize(qp, sp, t, h, d, group, fp8, out.data_ptr<c10::BFloat16>()); break;
    case at::kHalf: dequantize(qp, sp, t, h, d, group, fp8, out.data_ptr<c10::Half>()); break;
    default: TORCH_CHECK(false, "dequantize_kv: float32, bfloat16 or float16 only");
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tandem_cpu, m) {
  m.def("quantize_kv(Tensor x, bool fp8, int group_tokens, Tensor(a!) q, Tensor(b!) scales) "
        "-> ()");
  m.def("dequantize_kv(Tensor q, Tensor scales, bool fp8, int group_tokens, Tensor(a!) out) "
        "-> ()");
}

TORCH_LIBRARY_IMPL(tandem_cpu, CPU, m) {
  m.impl("quantize_kv", &quantize_kv);
  m.impl("dequantize_kv", &dequantize_kv);
}
