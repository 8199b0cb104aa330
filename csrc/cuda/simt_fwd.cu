// CUDA-core kernels: the float32 forward (exact float32 arithmetic, one warp per query row; the correctness path for
// float32 inputs, not a fast one) and the device-side builder of the global-token index lists.
#include <algorithm>
#include <cstdint>

#include "flash_params.h"
#include "lse_merge.h"
#include "platform.h"

namespace longattn::LONGATTN_CUDA_NS {

namespace {

__device__ __forceinline__ bool is_global(const FlashFwdParams& p, int b, int i) {
  return p.global_tokens && p.global_tokens[int64_t(b) * p.global_batch + int64_t(i) * p.global_seq];
}

// grid: x = query blocks of 4 (one row per warp; the block loops over x, x + gridDim.x, ...), y = batch * heads_q,
// z = key split. Query i of head h attends, in this order, the keys of its window (p - left·d .. p + right·d in steps of
// d) within the split, then the global keys its window did not already hold; a global query attends every key. Online
// softmax per warp, head dims up to 256 (8 values per lane); softcap, sinks, key padding, variable-length and KV-cache
// layouts as in the tensor-core kernel.
__global__ void __launch_bounds__(128) simt_fwd_kernel(const __grid_constant__ FlashFwdParams p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.y / p.heads_q, h = blockIdx.y % p.heads_q, hk = h / p.kv_group;
  const SequenceRows seq = sequence_rows(p, b);
  const bool split = p.n_splits > 1;
  const int64_t key_lo = split ? int64_t(blockIdx.z) * p.split_chunk : 0;
  const int64_t key_hi = split ? min(int64_t(seq.n_k), key_lo + p.split_chunk) : int64_t(seq.n_k);
  const float* q_all = static_cast<const float*>(p.q);
  const float* k_all = static_cast<const float*>(p.k);
  const float* v_all = static_cast<const float*>(p.v);
  const float qscale = p.softcap2 > 0.0f ? p.softcap_scale : p.scale_log2;
  for (int i = blockIdx.x * 4 + warp; i < seq.n_q; i += gridDim.x * 4) {
    const float* q = q_all + q_offset(p, seq, b, h, i);
    float qr[8], acc[8];
    for (int e = 0; e < 8; ++e) {
      const int d = lane + 32 * e;
      qr[e] = d < p.head_dim ? q[d] * qscale : 0.0f;
      acc[e] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    auto attend = [&](int j) {
      if (!key_is_real(p, b, j)) return;
      const int64_t k_off = kv_offset(p, seq, b, hk, j, p.k_batch, p.k_seq, p.k_head);
      const int64_t v_off = kv_offset(p, seq, b, hk, j, p.v_batch, p.v_seq, p.v_head);
      float dot = 0.0f;
      for (int e = 0; e < 8; ++e) {
        const int d = lane + 32 * e;
        if (d < p.head_dim && k_off >= 0) dot += qr[e] * k_all[k_off + d];
      }
      float s = warp_sum(dot);
      if (p.softcap2 > 0.0f) s = p.softcap2 * tanhf(s);
      const float m_new = fmaxf(m, s);
      const float ref = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = exp2f(m - ref), w = exp2f(s - ref);
      for (int e = 0; e < 8; ++e) {
        const int d = lane + 32 * e;
        acc[e] = acc[e] * alpha + (d < p.head_dim_v && v_off >= 0 ? w * v_all[v_off + d] : 0.0f);
      }
      l = l * alpha + w;
      m = m_new;
    };
    // Window arithmetic in 64 bits: bounds and dilation may each be up to 2^30.
    const int64_t d = p.uniform_dilation > 0 ? p.uniform_dilation : p.dilation[h];
    const int64_t pos = int64_t(i) + seq.n_k - seq.n_q;
    const bool global_row = is_global(p, b, i);
    auto in_window = [&](int64_t j) {
      if (((j - pos) % d + d) % d != 0) return false;
      if (p.window_left >= 0 && j < pos - int64_t(p.window_left) * d) return false;
      if (p.window_right >= 0 && j > pos + int64_t(p.window_right) * d) return false;
      return true;
    };
    if (global_row) {
      for (int j = 0; j < seq.n_k; ++j) attend(j);
    } else {
      // first key of the window in the query's residue class, clipped to the sequence and to the split
      int64_t lo = p.window_left < 0 ? 0 : pos - int64_t(p.window_left) * d;
      if (lo < 0) lo += ((-lo + d - 1) / d) * d;  // step up to >= 0 within the class
      if (lo < 0 || ((lo - pos) % d + d) % d != 0) lo = ((pos % d) + d) % d;
      if (lo < key_lo) lo += ((key_lo - lo + d - 1) / d) * d;
      const int64_t hi = min(key_hi - 1, p.window_right < 0 ? int64_t(seq.n_k) - 1 : pos + int64_t(p.window_right) * d);
      for (int64_t j = lo; j <= hi; j += d) attend(int(j));
      if (p.global_index) {
        const int32_t* gpos = p.global_index + int64_t(b) * p.seqlen_k;
        for (int gi = 0; gi < p.global_count[b]; ++gi)
          if (!in_window(gpos[gi])) attend(gpos[gi]);
      }
    }
    const float lse_part = l == 0.0f ? -INFINITY : 0.6931471805599453f * (m + log2f(l));
    if (split) {
      const int64_t prow = ((int64_t(blockIdx.z) * p.batch + b) * p.heads_q + h) * p.seqlen_q + i;
      const float inv = l == 0.0f ? 0.0f : 1.0f / l;
      for (int e = 0; e < 8; ++e) {
        const int dd = lane + 32 * e;
        if (dd < p.head_dim_v) p.partial_o[prow * p.head_dim_v + dd] = acc[e] * inv;
      }
      if (lane == 0) p.partial_lse[prow] = lse_part;
      continue;
    }
    float weight = l == 0.0f ? 0.0f : 1.0f, lse = lse_part;
    if (p.sinks) lse = lse_merge_weights(&lse_part, 1, true, p.sinks[h], [&](int, float w) { weight = w; });
    float* out = static_cast<float*>(p.out) + o_offset(p, seq, b, h, i);
    const float inv = weight == 0.0f ? 0.0f : weight / l;
    for (int e = 0; e < 8; ++e) {
      const int dd = lane + 32 * e;
      if (dd < p.head_dim_v) out[dd] = weight == 0.0f ? 0.0f : acc[e] * inv;
    }
    if (p.lse && lane == 0) p.lse[lse_offset(p, seq, b, h, i)] = lse;
  }
}

// One block per batch element: the ascending positions of its global tokens and their count, by a block-wide
// scan (warp ballots), 1024 positions per step.
__global__ void __launch_bounds__(1024) build_global_index_kernel(const uint8_t* tokens, int64_t batch_stride,
                                                                  int64_t seq_stride, int seqlen, int32_t* index,
                                                                  int32_t* count) {
  LONGATTN_SHARED(int[32], warp_total);
  LONGATTN_SHARED(int, running);
  const int b = blockIdx.x, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  if (tid == 0) running = 0;
  __syncthreads();
  for (int base = 0; base < seqlen; base += 1024) {
    const int i = base + tid;
    const bool flag = i < seqlen && tokens[b * batch_stride + int64_t(i) * seq_stride] != 0;
    const unsigned ballot = __ballot_sync(0xffffffffu, flag);
    if (lane == 0) warp_total[warp] = __popc(ballot);
    __syncthreads();
    int before = running;  // globals before this warp: earlier steps and earlier warps of this step
    for (int w = 0; w < warp; ++w) before += warp_total[w];
    if (flag) index[int64_t(b) * seqlen + before + __popc(ballot & ((1u << lane) - 1u))] = i;
    __syncthreads();
    if (tid == 0)
      for (int w = 0; w < 32; ++w) running += warp_total[w];
    __syncthreads();
  }
  if (tid == 0) count[b] = running;
}

}  // namespace

cudaError_t launch_simt_fwd(const FlashFwdParams& p, void* stream) {
  const dim3 grid(unsigned(std::max(1, std::min(65535, (p.seqlen_q + 3) / 4))), unsigned(p.batch * p.heads_q),
                  unsigned(std::max(1, p.n_splits)));
  return launch<simt_fwd_kernel>(grid, dim3(128), 0, stream, p);
}

cudaError_t launch_build_global_index(const uint8_t* tokens, int64_t batch_stride, int64_t seq_stride, int batch,
                                      int seqlen, int32_t* index, int32_t* count, void* stream) {
  return launch<build_global_index_kernel>(dim3(unsigned(batch)), dim3(1024), 0, stream, tokens, batch_stride,
                                           seq_stride, seqlen, index, count);
}

}  // namespace longattn::LONGATTN_CUDA_NS
