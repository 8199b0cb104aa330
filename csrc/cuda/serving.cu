// The two small kernels around KV-cache decoding: the in-place append of the new keys and values, and the merge of
// key splits (flash-decoding) by their log-sum-exps.
#include <cstdint>

#include "flash_params.h"
#include "lse_merge.h"
#include "platform.h"

namespace longattn::LONGATTN_CUDA_NS {

namespace {

// The new keys and values (batch, seqlen_new, heads_k, ·) are written at position cache_seqlens[b] + t. A position past
// the capacity, or a block index outside the cache, writes nothing: CPU tensors are checked before the call, and on
// the GPU the values are not read back to the host, so a bad value can only lose a row, never write outside the
// cache. grid: x = token t, y = sequence b; threads over (head, element). Storage: the element's bits (2 or 4 bytes).
template <typename Bits>
__global__ void __launch_bounds__(128) append_kv_kernel(const __grid_constant__ FlashFwdParams p, const Bits* k_new,
                                                        const Bits* v_new, int64_t kn_batch, int64_t kn_seq,
                                                        int64_t kn_head, int64_t vn_batch, int64_t vn_seq,
                                                        int64_t vn_head) {
  const int t = blockIdx.x, b = blockIdx.y;
  const int64_t pos = int64_t(p.cache_seqlens[b]) + t;
  if (pos < 0 || pos >= p.seqlen_k) return;
  const SequenceRows seq{0, 0, 0, 0};  // a KV cache is not packed
  Bits* k_cache = static_cast<Bits*>(const_cast<void*>(p.k));
  Bits* v_cache = static_cast<Bits*>(const_cast<void*>(p.v));
  for (int x = threadIdx.x; x < p.heads_k * p.head_dim; x += blockDim.x) {
    const int hk = x / p.head_dim, e = x % p.head_dim;
    const int64_t off = kv_offset(p, seq, b, hk, int(pos), p.k_batch, p.k_seq, p.k_head);
    if (off >= 0) k_cache[off + e] = k_new[b * kn_batch + int64_t(t) * kn_seq + hk * kn_head + e];
  }
  for (int x = threadIdx.x; x < p.heads_k * p.head_dim_v; x += blockDim.x) {
    const int hk = x / p.head_dim_v, e = x % p.head_dim_v;
    const int64_t off = kv_offset(p, seq, b, hk, int(pos), p.v_batch, p.v_seq, p.v_head);
    if (off >= 0) v_cache[off + e] = v_new[b * vn_batch + int64_t(t) * vn_seq + hk * vn_head + e];
  }
}

// out and lse of each row (batch, head_q, query) from the splits' normalised partials and lses, the sink joining the
// denominator. grid: x = row; threads over the value dim.
template <typename Elem>
__global__ void __launch_bounds__(128) merge_splits_kernel(const __grid_constant__ FlashFwdParams p) {
  const int64_t row = blockIdx.x, rows = int64_t(p.batch) * p.heads_q * p.seqlen_q;
  const int i = int(row % p.seqlen_q), h = int((row / p.seqlen_q) % p.heads_q);
  const int b = int(row / (int64_t(p.seqlen_q) * p.heads_q));
  float lse_parts[64], weights[64];
  for (int s = 0; s < p.n_splits; ++s) lse_parts[s] = p.partial_lse[s * rows + row];
  const float lse = lse_merge_weights(lse_parts, p.n_splits, p.sinks != nullptr, p.sinks ? p.sinks[h] : 0.0f,
                                      [&](int s, float w) { weights[s] = w; });
  const SequenceRows seq{p.seqlen_q, p.seqlen_k, 0, 0};
  Elem* out = static_cast<Elem*>(p.out) + o_offset(p, seq, b, h, i);
  for (int e = threadIdx.x; e < p.head_dim_v; e += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < p.n_splits; ++s)
      if (weights[s] != 0.0f) acc += weights[s] * p.partial_o[(s * rows + row) * p.head_dim_v + e];
    out[e] = Elem(acc);
  }
  if (p.lse && threadIdx.x == 0) p.lse[lse_offset(p, seq, b, h, i)] = lse;
}

}  // namespace

// elem_bytes: 2 (float16 / bfloat16) or 4 (float32); strides of k_new / v_new in elements (batch, seq, head).
cudaError_t launch_append_kv(const FlashFwdParams& p, const void* k_new, const void* v_new,
                             const int64_t* kn_strides, const int64_t* vn_strides, int elem_bytes, void* stream) {
  const dim3 grid(unsigned(p.seqlen_new), unsigned(p.batch));
  if (elem_bytes == 2)
    return launch<append_kv_kernel<uint16_t>>(grid, dim3(128), 0, stream, p, static_cast<const uint16_t*>(k_new),
                                              static_cast<const uint16_t*>(v_new), kn_strides[0], kn_strides[1],
                                              kn_strides[2], vn_strides[0], vn_strides[1], vn_strides[2]);
  return launch<append_kv_kernel<uint32_t>>(grid, dim3(128), 0, stream, p, static_cast<const uint32_t*>(k_new),
                                            static_cast<const uint32_t*>(v_new), kn_strides[0], kn_strides[1],
                                            kn_strides[2], vn_strides[0], vn_strides[1], vn_strides[2]);
}

// dtype: 0 float32, 1 float16, 2 bfloat16 (longattn::DType)
cudaError_t launch_merge_splits(const FlashFwdParams& p, int dtype, void* stream) {
  const dim3 grid(unsigned(int64_t(p.batch) * p.heads_q * p.seqlen_q));
  switch (dtype) {
    case 1: return launch<merge_splits_kernel<__half>>(grid, dim3(128), 0, stream, p);
    case 2: return launch<merge_splits_kernel<__nv_bfloat16>>(grid, dim3(128), 0, stream, p);
    default: return launch<merge_splits_kernel<float>>(grid, dim3(128), 0, stream, p);
  }
}

}  // namespace longattn::LONGATTN_CUDA_NS
