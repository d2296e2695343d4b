// Paged decode attention (GQA) for CPUs: the kernel of torch.ops.tandem_cpu.paged_decode_attention
// (attention.cpp) and of the decode layers (decoder.cpp).
//
// The torch reference gathers every sequence's blocks into a padded [batch, kv_heads, max_ctx,
// dim] copy and runs a masked SDPA over it: at batch 32 that is two extra passes over all the
// KV of the batch per layer, plus the padding. Here one task per (sequence, KV head) reads its
// K and V rows straight out of the cache blocks, once, for the whole query group:
//   pass 1: scores[g][t] = scale * <q_g, k_t> for the group's G query heads
//   softmax over t in float32 (exp vectorized)
//   pass 2: out_g = sum_t p[g][t] * v_t / sum_t p[g][t]
// Tasks run on ATen's intra-op thread pool. AVX-512 when the compiler targets it (the loader
// builds with -march=native for the machine it runs on), portable scalar code otherwise.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "vec.h"

namespace tandem_cpu {

struct Geometry {
  int64_t batch, heads, dim, kv_heads, group, block_size, max_blocks;
  int64_t q_sb, q_sh, o_sb, o_sh;          // q / out strides (elements) of batch and head
  int64_t c_sblk, c_stok, c_shead;         // cache strides of block, token, kv head
};

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) { return static_cast<float>(x); }
inline float to_float(c10::Half x) { return static_cast<float>(x); }

// Scalar path: any head_dim and group size.
template <typename T>
void attend_scalar(const Geometry& g, const T* q, const T* k, const T* v, const int64_t* table,
                   int64_t ctx, int64_t kvh, float scale, T* out, std::vector<float>& scores) {
  scores.resize(g.group * ctx);
  std::vector<float> acc(g.dim);
  for (int64_t j = 0; j < g.group; ++j) {
    const T* qj = q + (kvh * g.group + j) * g.q_sh;
    float* s = scores.data() + j * ctx;
    float mx = -INFINITY;
    for (int64_t t = 0; t < ctx; ++t) {
      const T* kt = k + table[t / g.block_size] * g.c_sblk + (t % g.block_size) * g.c_stok +
                    kvh * g.c_shead;
      float dot = 0.f;
      for (int64_t d = 0; d < g.dim; ++d) dot += to_float(qj[d]) * to_float(kt[d]);
      s[t] = dot * scale;
      mx = std::max(mx, s[t]);
    }
    float sum = 0.f;
    for (int64_t t = 0; t < ctx; ++t) sum += (s[t] = std::exp(s[t] - mx));
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int64_t t = 0; t < ctx; ++t) {
      const T* vt = v + table[t / g.block_size] * g.c_sblk + (t % g.block_size) * g.c_stok +
                    kvh * g.c_shead;
      for (int64_t d = 0; d < g.dim; ++d) acc[d] += s[t] * to_float(vt[d]);
    }
    T* oj = out + (kvh * g.group + j) * g.o_sh;
    for (int64_t d = 0; d < g.dim; ++d) oj[d] = static_cast<T>(acc[d] / sum);
  }
}

#if defined(__AVX512F__)
// Softmax numerators in place over s[0, n); returns their sum.
inline float exp_minus_max(float* s, int64_t n) {
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  int64_t t = 0;
  for (; t + 16 <= n; t += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(s + t));
  float mx = _mm512_reduce_max_ps(vmax);
  for (; t < n; ++t) mx = std::max(mx, s[t]);
  __m512 vsum = _mm512_setzero_ps(), m = _mm512_set1_ps(mx);
  for (t = 0; t + 16 <= n; t += 16) {
    __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + t), m));
    _mm512_storeu_ps(s + t, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  float sum = _mm512_reduce_add_ps(vsum);
  for (; t < n; ++t) sum += (s[t] = std::exp(s[t] - mx));
  return sum;
}

// G query heads share each K/V row; C = head_dim / 16 vectors per row, both compile-time so
// the group's q and accumulators live in registers.
template <typename T, int G, int C>
void attend_avx512(const Geometry& g, const T* q, const T* k, const T* v, const int64_t* table,
                   int64_t ctx, int64_t kvh, float scale, T* out, std::vector<float>& scores) {
  scores.resize(G * ctx);
  float* s = scores.data();
  __m512 qv[G][C];
  for (int j = 0; j < G; ++j)
    for (int c = 0; c < C; ++c)
      qv[j][c] = _mm512_mul_ps(load16(q + (kvh * G + j) * g.q_sh + 16 * c), _mm512_set1_ps(scale));
  const int64_t head_off = kvh * g.c_shead;
  for (int64_t t0 = 0; t0 < ctx; t0 += g.block_size) {
    const int64_t blk = table[t0 / g.block_size] * g.c_sblk + head_off;
    const int64_t n = std::min(g.block_size, ctx - t0);
    for (int64_t i = 0; i < n; ++i) {
      const T* kt = k + blk + i * g.c_stok;
      __m512 acc[G];
      for (int j = 0; j < G; ++j) acc[j] = _mm512_setzero_ps();
      for (int c = 0; c < C; ++c) {
        __m512 kc = load16(kt + 16 * c);
        for (int j = 0; j < G; ++j) acc[j] = _mm512_fmadd_ps(qv[j][c], kc, acc[j]);
      }
      for (int j = 0; j < G; ++j) s[j * ctx + t0 + i] = _mm512_reduce_add_ps(acc[j]);
    }
  }
  float inv[G];
  for (int j = 0; j < G; ++j) inv[j] = 1.f / exp_minus_max(s + j * ctx, ctx);
  __m512 acc[G][C];
  for (int j = 0; j < G; ++j)
    for (int c = 0; c < C; ++c) acc[j][c] = _mm512_setzero_ps();
  for (int64_t t0 = 0; t0 < ctx; t0 += g.block_size) {
    const int64_t blk = table[t0 / g.block_size] * g.c_sblk + head_off;
    const int64_t n = std::min(g.block_size, ctx - t0);
    for (int64_t i = 0; i < n; ++i) {
      const T* vt = v + blk + i * g.c_stok;
      for (int c = 0; c < C; ++c) {
        __m512 vc = load16(vt + 16 * c);
        for (int j = 0; j < G; ++j)
          acc[j][c] = _mm512_fmadd_ps(_mm512_set1_ps(s[j * ctx + t0 + i]), vc, acc[j][c]);
      }
    }
  }
  alignas(64) float row[16 * C];
  for (int j = 0; j < G; ++j) {
    for (int c = 0; c < C; ++c)
      _mm512_store_ps(row + 16 * c, _mm512_mul_ps(acc[j][c], _mm512_set1_ps(inv[j])));
    T* oj = out + (kvh * G + j) * g.o_sh;
    for (int d = 0; d < 16 * C; ++d) oj[d] = static_cast<T>(row[d]);
  }
}

template <typename T, int G>
bool dispatch_dim(const Geometry& g, const T* q, const T* k, const T* v, const int64_t* tb,
                  int64_t ctx, int64_t kvh, float scale, T* o, std::vector<float>& s) {
  switch (g.dim) {
    case 16: attend_avx512<T, G, 1>(g, q, k, v, tb, ctx, kvh, scale, o, s); return true;
    case 32: attend_avx512<T, G, 2>(g, q, k, v, tb, ctx, kvh, scale, o, s); return true;
    case 64: attend_avx512<T, G, 4>(g, q, k, v, tb, ctx, kvh, scale, o, s); return true;
    case 96: attend_avx512<T, G, 6>(g, q, k, v, tb, ctx, kvh, scale, o, s); return true;
    case 128: attend_avx512<T, G, 8>(g, q, k, v, tb, ctx, kvh, scale, o, s); return true;
    default: return false;
  }
}
#endif

template <typename T>
void attend(const Geometry& g, const T* q, const T* k, const T* v, const int64_t* table,
            int64_t ctx, int64_t kvh, float scale, T* out, std::vector<float>& scores) {
#if defined(__AVX512F__)
  bool done = false;
  switch (g.group) {
    case 1: done = dispatch_dim<T, 1>(g, q, k, v, table, ctx, kvh, scale, out, scores); break;
    case 2: done = dispatch_dim<T, 2>(g, q, k, v, table, ctx, kvh, scale, out, scores); break;
    case 3: done = dispatch_dim<T, 3>(g, q, k, v, table, ctx, kvh, scale, out, scores); break;
    case 4: done = dispatch_dim<T, 4>(g, q, k, v, table, ctx, kvh, scale, out, scores); break;
    case 5: done = dispatch_dim<T, 5>(g, q, k, v, table, ctx, kvh, scale, out, scores); break;
    case 6: done = dispatch_dim<T, 6>(g, q, k, v, table, ctx, kvh, scale, out, scores); break;
    case 7: done = dispatch_dim<T, 7>(g, q, k, v, table, ctx, kvh, scale, out, scores); break;
    case 8: done = dispatch_dim<T, 8>(g, q, k, v, table, ctx, kvh, scale, out, scores); break;
    default: break;
  }
  if (done) return;
#endif
  attend_scalar(g, q, k, v, table, ctx, kvh, scale, out, scores);
}

// All (sequence, KV head) tasks of a batch on ATen's thread pool.
template <typename T>
void attend_all(const Geometry& g, const T* q, const T* k_cache, const T* v_cache,
                const int64_t* tables, const int64_t* lens, float scale, T* out) {
  at::parallel_for(0, g.batch * g.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / g.kv_heads, kvh = task % g.kv_heads;
      attend(g, q + b * g.q_sb, k_cache, v_cache, tables + b * g.max_blocks, lens[b], kvh,
             scale, out + b * g.o_sb, scores);
    }
  });
}

}  // namespace tandem_cpu
