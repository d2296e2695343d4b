// KV pack (gather a sequence's tokens out of the paged cache, token-major) and unpack (scatter
// them back into blocks) for CPUs, registered as torch.ops.tandem_cpu.pack_kv_nhd /
// unpack_kv_nhd: byte copies, so bit-identical to kernels/kv_pack.py's torch reference in any
// dtype. In the NHD layout a block's tokens [a, b) are one contiguous run of (b - a) * H * D
// values, so each (layer, k/v, block) touched is one memcpy. The reference moves whole blocks
// with index_select / index_copy_ over int64 words, element by element: ~3.4 GB/s on one core
// here, where memcpy streams ~20 GB/s. That difference was most of a KV handoff receiver's CPU
// time.
//
// Single-threaded on purpose: the handoff calls these on its own sending or receiving thread,
// next to gRPC's threads; splitting one ~1 MiB chunk over the cores would only take them from
// gRPC.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

// memcpy with non-temporal stores for the receiver's scatter: the cache blocks written are
// not read again until the request decodes, so streaming stores skip reading each
// destination line in first (a third of the memory traffic of a cached store).
void copy_streaming(char* dst, const char* src, int64_t n) {
#if defined(__AVX512F__)
  const int64_t lead = std::min<int64_t>(n, (64 - reinterpret_cast<uintptr_t>(dst) % 64) % 64);
  std::memcpy(dst, src, lead);
  int64_t i = lead;
  for (; i + 64 <= n; i += 64)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i),
                        _mm512_loadu_si512(reinterpret_cast<const void*>(src + i)));
  std::memcpy(dst + i, src + i, n - i);
#else
  std::memcpy(dst, src, n);
#endif
}

struct Runs {
  const int64_t* table;
  int64_t table_len, num_blocks, block_size, token_bytes;
  int64_t layers;   // 1 for a single layer's cache
};

// Every block id of tokens [start, start + total) is checked before any copy, so a bad table
// raises with the cache untouched.
void check_ids(const Runs& r, int64_t start, int64_t total) {
  if (total <= 0) return;
  const int64_t first = start / r.block_size, last = (start + total - 1) / r.block_size;
  TORCH_CHECK(last < r.table_len, "token range [", start, ", ", start + total,
              ") outside the block table's ", r.table_len, " blocks");
  for (int64_t i = first; i <= last; ++i)
    TORCH_CHECK(r.table[i] >= 0 && r.table[i] < r.num_blocks, "block id ", r.table[i],
                " outside the cache's ", r.num_blocks, " blocks");
}

// Calls f(block id, offset in block, offset in the token-major buffer, tokens) for each run
// of tokens [start, start + total) that lies in one block (ids checked by check_ids).
template <typename F>
void for_each_run(const Runs& r, int64_t start, int64_t total, F f) {
  int64_t done = 0;
  while (done < total) {
    const int64_t pos = start + done, off = pos % r.block_size;
    const int64_t n = std::min(r.block_size - off, total - done);
    f(r.table[pos / r.block_size], off, done, n);
    done += n;
  }
}

// One layer: cache [2, num_blocks, block_size, H, D] and data [2, T, H, D]. Several
// consecutive layers (a slice of the engine's whole cache): cache [L, 2, num_blocks,
// block_size, H, D] and data [L, 2, T, H, D], so a multi-layer chunk moves in one call
// instead of one Python round trip per layer.
Runs check(const at::Tensor& cache, const at::Tensor& table, const at::Tensor& data,
           int64_t start, const char* op) {
  const bool multi = cache.dim() == 6;
  const int64_t o = multi ? 1 : 0;   // the k/v dimension
  TORCH_CHECK((cache.dim() == 5 || multi) && cache.size(o) == 2 && cache.is_contiguous(), op,
              ": cache must be a contiguous [(L,) 2, num_blocks, block_size, H, D] (NHD)");
  TORCH_CHECK(data.dim() == cache.dim() - 1 && data.is_contiguous() && data.size(o) == 2 &&
                  (!multi || data.size(0) == cache.size(0)) &&
                  data.size(o + 2) == cache.size(o + 3) && data.size(o + 3) == cache.size(o + 4) &&
                  data.scalar_type() == cache.scalar_type(),
              op, ": data must be a contiguous [(L,) 2, T, H, D] of the cache's dtype and layers");
  TORCH_CHECK(table.dim() == 1 && table.scalar_type() == at::kLong && table.is_contiguous(), op,
              ": block_table must be a contiguous 1-D int64 tensor");
  TORCH_CHECK(start >= 0, op, ": start must be >= 0");
  return Runs{table.data_ptr<int64_t>(), table.size(0), cache.size(o + 1), cache.size(o + 2),
              cache.size(o + 3) * cache.size(o + 4) * static_cast<int64_t>(cache.element_size()),
              multi ? cache.size(0) : 1};
}

// out [(L,) 2, T, H, D] <- tokens [start, start + T) of the cache (NHD) via block_table.
void pack_kv_nhd(const at::Tensor& cache, const at::Tensor& table, int64_t start,
                 at::Tensor& out) {
  const Runs r = check(cache, table, out, start, "pack_kv_nhd");
  const int64_t total = out.size(out.dim() - 3), block_bytes = r.block_size * r.token_bytes;
  const int64_t half_cache = r.num_blocks * block_bytes, half_out = total * r.token_bytes;
  check_ids(r, start, total);
  const auto* src = static_cast<const char*>(cache.data_ptr());
  auto* dst = static_cast<char*>(out.data_ptr());
  for (int64_t kv = 0; kv < 2 * r.layers; ++kv)   // (layer, k/v) halves, in memory order
    for_each_run(r, start, total, [&](int64_t block, int64_t off, int64_t at, int64_t n) {
      std::memcpy(dst + kv * half_out + at * r.token_bytes,
                  src + kv * half_cache + block * block_bytes + off * r.token_bytes,
                  n * r.token_bytes);
    });
}

// tokens [start, start + T) of the cache (NHD) via block_table <- data [(L,) 2, T, H, D].
void unpack_kv_nhd(at::Tensor& cache, const at::Tensor& table, const at::Tensor& data,
                   int64_t start) {
  const Runs r = check(cache, table, data, start, "unpack_kv_nhd");
  const int64_t total = data.size(data.dim() - 3), block_bytes = r.block_size * r.token_bytes;
  const int64_t half_cache = r.num_blocks * block_bytes, half_data = total * r.token_bytes;
  check_ids(r, start, total);
  auto* dst = static_cast<char*>(cache.data_ptr());
  const auto* src = static_cast<const char*>(data.data_ptr());
  for (int64_t kv = 0; kv < 2 * r.layers; ++kv)
    for_each_run(r, start, total, [&](int64_t block, int64_t off, int64_t at, int64_t n) {
      copy_streaming(dst + kv * half_cache + block * block_bytes + off * r.token_bytes,
                     src + kv * half_data + at * r.token_bytes, n * r.token_bytes);
    });
#if defined(__AVX512F__)
  _mm_sfence();   // order the streaming stores before whatever reads the cache next
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tandem_cpu, m) {
  m.def("pack_kv_nhd(Tensor cache, Tensor block_table, int start, Tensor(a!) out) -> ()");
  m.def("unpack_kv_nhd(Tensor(a!) cache, Tensor block_table, Tensor data, int start) -> ()");
}

TORCH_LIBRARY_IMPL(tandem_cpu, CPU, m) {
  m.impl("pack_kv_nhd", &pack_kv_nhd);
  m.impl("unpack_kv_nhd", &unpack_kv_nhd);
}
