// CUDA-core kernels: the float32 forward (exact float32 arithmetic, one warp per query row; the correctness path for
// float32 inputs, not a fast one) and the device-side builder of the global-token index lists.
#include <cstdint>

#include "flash_params.h"
#include "platform.h"

namespace longattn::LONGATTN_CUDA_NS {

namespace {

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ bool is_global(const FlashFwdParams& p, int b, int i) {
  return p.global_tokens && p.global_tokens[b * p.global_batch + int64_t(i) * p.global_seq];
}

// grid: x = query block of 4 (one per warp), y = batch * heads_q. Query i of head h attends, in this order, the keys
// of its window (p - left·d .. p + right·d in steps of d), then the global keys its window did not already hold; a
// global query attends every key. Online softmax per warp, head dims up to 256 (8 values per lane).
__global__ void __launch_bounds__(128) simt_fwd_kernel(const __grid_constant__ FlashFwdParams p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int i = blockIdx.x * 4 + warp;
  const int b = blockIdx.y / p.heads_q, h = blockIdx.y % p.heads_q, hk = h / p.kv_group;
  if (i >= p.seqlen_q) return;
  const float* q = static_cast<const float*>(p.q) + b * p.q_batch + h * p.q_head + int64_t(i) * p.q_seq;
  const float* k_head = static_cast<const float*>(p.k) + b * p.k_batch + hk * p.k_head;
  const float* v_head = static_cast<const float*>(p.v) + b * p.v_batch + hk * p.v_head;
  float qr[8], acc[8];
  for (int e = 0; e < 8; ++e) {
    const int d = lane + 32 * e;
    qr[e] = d < p.head_dim ? q[d] * p.scale_log2 : 0.0f;
    acc[e] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  auto attend = [&](int j) {
    const float* k = k_head + int64_t(j) * p.k_seq;
    float dot = 0.0f;
    for (int e = 0; e < 8; ++e) {
      const int d = lane + 32 * e;
      if (d < p.head_dim) dot += qr[e] * k[d];
    }
    const float s = warp_sum(dot);
    const float m_new = fmaxf(m, s);
    const float ref = m_new == -INFINITY ? 0.0f : m_new;
    const float alpha = exp2f(m - ref), w = exp2f(s - ref);
    const float* v = v_head + int64_t(j) * p.v_seq;
    for (int e = 0; e < 8; ++e) {
      const int d = lane + 32 * e;
      acc[e] = acc[e] * alpha + (d < p.head_dim_v ? w * v[d] : 0.0f);
    }
    l = l * alpha + w;
    m = m_new;
  };
  // Window arithmetic in 64 bits: bounds and dilation may each be up to 2^30.
  const int64_t d = p.uniform_dilation > 0 ? p.uniform_dilation : p.dilation[h];
  const int64_t pos = int64_t(i) + p.seqlen_k - p.seqlen_q;
  const bool global_row = is_global(p, b, i);
  auto in_window = [&](int64_t j) {
    if (((j - pos) % d + d) % d != 0) return false;
    if (p.window_left >= 0 && j < pos - int64_t(p.window_left) * d) return false;
    if (p.window_right >= 0 && j > pos + int64_t(p.window_right) * d) return false;
    return true;
  };
  if (global_row) {
    for (int j = 0; j < p.seqlen_k; ++j) attend(j);
  } else {
    // first key of the window in the query's residue class, clipped to the sequence
    int64_t lo = p.window_left < 0 ? 0 : pos - int64_t(p.window_left) * d;
    if (lo < 0) lo += ((-lo + d - 1) / d) * d;  // step up to >= 0 within the class
    if (lo < 0 || ((lo - pos) % d + d) % d != 0) lo = ((pos % d) + d) % d;
    const int64_t hi = p.window_right < 0 ? int64_t(p.seqlen_k) - 1
                                          : min(int64_t(p.seqlen_k) - 1, pos + int64_t(p.window_right) * d);
    for (int64_t j = lo; j <= hi; j += d) attend(int(j));
    if (p.global_index) {
      const int32_t* gpos = p.global_index + int64_t(b) * p.seqlen_k;
      for (int g = 0; g < p.global_count[b]; ++g)
        if (!in_window(gpos[g])) attend(gpos[g]);
    }
  }
  float* out = static_cast<float*>(p.out) + b * p.o_batch + h * p.o_head + int64_t(i) * p.o_seq;
  const float inv = l == 0.0f ? 0.0f : 1.0f / l;
  for (int e = 0; e < 8; ++e) {
    const int dd = lane + 32 * e;
    if (dd < p.head_dim_v) out[dd] = acc[e] * inv;
  }
  if (p.lse && lane == 0)
    p.lse[b * p.lse_batch + h * p.lse_head + i] = l == 0.0f ? -INFINITY : 0.6931471805599453f * (m + log2f(l));
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
  const dim3 grid((p.seqlen_q + 3) / 4, p.batch * p.heads_q);
  return launch<simt_fwd_kernel>(grid, dim3(128), 0, stream, p);
}

cudaError_t launch_build_global_index(const uint8_t* tokens, int64_t batch_stride, int64_t seq_stride, int batch,
                                      int seqlen, int32_t* index, int32_t* count, void* stream) {
  return launch<build_global_index_kernel>(dim3(unsigned(batch)), dim3(1024), 0, stream, tokens, batch_stride,
                                           seq_stride, seqlen, index, count);
}

}  // namespace longattn::LONGATTN_CUDA_NS
