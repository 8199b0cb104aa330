// LSH attention on CUDA (docs/semantics.md, lsh_attention): the hashing and bucket-sort kernels, the float32 chunked
// attention on CUDA cores, and the host entry point that checks a call, lays out its scratch (LshFwdParams) and
// launches the kernels on the caller's stream. No allocation and no host synchronisation: the scratch comes from the
// caller (LshAttentionParams::workspace, sized by lsh_attention_workspace_bytes), so the call can be graph-captured.
#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda_backend.h"
#include "cuda_host.h"
#include "flash_fwd.cuh"
#include "flash_params.h"
#include "lsh_params.h"
#include "platform.h"

namespace longattn::LONGATTN_CUDA_NS {

namespace {

template <typename Elem> __device__ __forceinline__ float to_float(Elem x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

// ---- 1. key normalisation and hashing ------------------------------------------------------------------------------
// grid: x = tiles of 32 tokens, y = batch · heads; one warp, a token per lane. Shared: sX (32, D + 1) float32, the
// tile's qk rows (the odd row stride puts the lanes' reads in distinct banks).
// The arithmetic is the CPU's, operation for operation, so the buckets are the same bits: float32 values of the
// inputs, a fused multiply-add chain over d ascending for every projection and for Σ qk², IEEE division and square
// root; per factor the first maximal projection and the first minimal one, the + side winning a tie of
// max(xR) and max(-xR).
template <typename Elem>
__global__ void __launch_bounds__(32) lsh_hash_kernel(const __grid_constant__ LshFwdParams p) {
  LONGATTN_DYNAMIC_SHARED(float, sX);
  const int b = blockIdx.y / p.heads, h = blockIdx.y % p.heads, lane = threadIdx.x;
  const int D = p.head_dim, ld = D + 1, t0 = blockIdx.x * 32, n = min(32, p.seqlen - t0);
  const Elem* qk = static_cast<const Elem*>(p.qk) + int64_t(b) * p.qk_batch + int64_t(h) * p.qk_head;
  for (int e = lane; e < n * D; e += 32) {
    const int row = e / D, d = e % D;
    sX[row * ld + d] = to_float(qk[int64_t(t0 + row) * p.qk_seq + d]);
  }
  __syncwarp();
  if (lane >= n) return;
  const int t = t0 + lane;
  const float* x = sX + lane * ld;  // (D)
  const int64_t bh = int64_t(b) * p.heads + h;

  float sum_sq = 0.0f;
  for (int d = 0; d < D; ++d) sum_sq = fmaf(x[d], x[d], sum_sq);
  p.key_scale[bh * p.seqlen + t] = (1.0f / sqrtf(float(D))) / sqrtf(sum_sq / float(D) + 1e-6f);

  if (!p.rotations && !p.buckets_in) return;  // nothing to hash: one round, no buckets asked for
  const bool padding = lsh_is_padding(p, b, t);
  const int64_t rot_d = int64_t(p.n_hashes) * p.columns;  // stride of d in the rotations
  for (int r = 0; r < p.n_hashes; ++r) {
    const int64_t at = (bh * p.n_hashes + r) * p.seqlen + t;
    int bucket = 0;
    if (p.buckets_in) {
      bucket = int(clamp64(p.buckets_in[at], 0, p.n_buckets));
    } else {
      // bucket = Σ_i argmax(concat(x R_i, -x R_i)) · Π_{j<i} f_j, factor i on its own f_i / 2 columns
      const float* rot_round = p.rotations + (int64_t(h) * D * p.n_hashes + r) * p.columns;  // R[h, 0, r, :]
      int column0 = 0, place = 1;
      for (int f = 0; f < p.n_factors; ++f) {
        const int half = p.factors[f] / 2;
        float best_max = -INFINITY, best_min = INFINITY;
        int arg_max = 0, arg_min = 0;
        for (int j = 0; j < half; ++j) {
          const float* column = rot_round + column0 + j;  // R[h, d, r, column0 + j] at column[d · rot_d]
          float dot = 0.0f;
          for (int d = 0; d < D; ++d) dot = fmaf(column[d * rot_d], x[d], dot);
          if (best_max < dot) best_max = dot, arg_max = j;
          if (dot < best_min) best_min = dot, arg_min = j;
        }
        bucket += (best_max >= -best_min ? arg_max : half + arg_min) * place;
        column0 += half;
        place *= p.factors[f];
      }
      if (padding) bucket = p.n_buckets;
    }
    if (p.buckets) p.buckets[at] = bucket;
    if (p.buckets_out) p.buckets_out[at] = bucket;
  }
}

// ---- 2. the stable bucket sort --------------------------------------------------------------------------------------
// The lanes of the warp whose x equals this lane's (__match_any_sync, written with shuffles: the emulator models
// those). Every lane of the warp must call it.
__device__ __forceinline__ unsigned lanes_with_same_value(int x) {
  unsigned peers = 0;
  for (int j = 0; j < 32; ++j) peers |= unsigned(__shfl_sync(0xffffffffu, x, j) == x) << j;
  return peers;
}

// grid: x = batch · heads · n_hashes (one round of one head); block = kSortWarps warps, warp w owning the contiguous
// segment w of the round's tokens. A counting sort by bucket, stable by position, in O(seqlen + n_buckets) work:
//   1. each warp counts its segment's buckets (32 tokens at a time; one lane per distinct bucket adds its lanes);
//   2. an exclusive scan over (bucket, warp) in bucket-major order turns the counts into each warp's first slot per
//      bucket, so a bucket's items of earlier segments come first;
//   3. each warp places its tokens in order: slot = first slot + the earlier lanes with the same bucket.
// counts (kSortWarps, n_buckets + 1) int32 per item, in the workspace; sorted (seqlen) per item.
__global__ void __launch_bounds__(kSortWarps * 32) lsh_sort_kernel(const __grid_constant__ LshFwdParams p) {
  constexpr int kThreadsPerBlock = kSortWarps * 32;
  LONGATTN_SHARED(int[kThreadsPerBlock], partial);
  const int item = blockIdx.x, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t bh = item / p.n_hashes, r = item % p.n_hashes;
  const int32_t* bucket = p.buckets + int64_t(item) * p.seqlen;  // (seqlen): buckets[b, h, r, :]
  int32_t* sorted = p.sorted + (bh * p.rounds + r) * p.seqlen;    // (seqlen)
  const int nb = p.n_buckets + 1;                                 // with the padding bucket
  int32_t* counts = p.counts + int64_t(item) * kSortWarps * nb;   // (kSortWarps, nb)
  int32_t* mine = counts + int64_t(warp) * nb;                    // (nb): this warp's
  const int seg = (p.seqlen + kSortWarps - 1) / kSortWarps;
  const int lo = min(p.seqlen, warp * seg), hi = min(p.seqlen, lo + seg);

  for (int x = lane; x < nb; x += 32) mine[x] = 0;
  __syncwarp();
  for (int t0 = lo; t0 < hi; t0 += 32) {
    const int t = t0 + lane;
    const int x = t < hi ? bucket[t] : -1;
    const unsigned peers = lanes_with_same_value(x);
    if (t < hi && (peers >> lane) == 1u) mine[x] += __popc(peers);  // the highest lane of the group adds it
    __syncwarp();
  }
  __syncthreads();

  // Exclusive scan of counts[w][x] in the order (x, w): thread i takes a contiguous run of that order.
  const int64_t total = int64_t(nb) * kSortWarps, per = (total + kThreadsPerBlock - 1) / kThreadsPerBlock;
  const int64_t f0 = min(total, tid * per), f1 = min(total, f0 + per);
  const auto slot = [&](int64_t f) -> int32_t& { return counts[(f % kSortWarps) * nb + f / kSortWarps]; };
  int run = 0;
  for (int64_t f = f0; f < f1; ++f) run += slot(f);
  partial[tid] = run;
  __syncthreads();
  if (tid == 0) {
    int before = 0;
    for (int i = 0; i < kThreadsPerBlock; ++i) {
      const int c = partial[i];
      partial[i] = before;
      before += c;
    }
  }
  __syncthreads();
  run = partial[tid];
  for (int64_t f = f0; f < f1; ++f) {
    const int c = slot(f);
    slot(f) = run;
    run += c;
  }
  __syncthreads();

  for (int t0 = lo; t0 < hi; t0 += 32) {
    const int t = t0 + lane;
    const int x = t < hi ? bucket[t] : -1;
    const unsigned peers = lanes_with_same_value(x);
    if (t < hi) sorted[mine[x] + __popc(peers & ((1u << lane) - 1u))] = t;
    __syncwarp();  // every lane has read mine[x] before it moves on
    if (t < hi && (peers >> lane) == 1u) mine[x] += __popc(peers);
    __syncwarp();
  }
}

// ---- 3. float32 chunked attention on CUDA cores ---------------------------------------------------------------------
// grid: x = blocks of 4 sorted queries over every round (the block loops over x, x + gridDim.x, ...), y = batch · heads;
// one warp per query, head dims up to 256 (8 values per lane). Exact float32, like the dense float32 kernel.
__global__ void __launch_bounds__(128) lsh_chunk_simt_kernel(const __grid_constant__ LshFwdParams p) {
  const int b = blockIdx.y / p.heads, h = blockIdx.y % p.heads, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* qk = static_cast<const float*>(p.qk) + int64_t(b) * p.qk_batch + int64_t(h) * p.qk_head;
  const float* vh = static_cast<const float*>(p.v) + int64_t(b) * p.v_batch + int64_t(h) * p.v_head;
  const float* key_scale = p.key_scale + (int64_t(b) * p.heads + h) * p.seqlen;
  const int64_t n_items = int64_t(p.rounds) * p.chunks_per_round * p.chunk;
  for (int64_t item = int64_t(blockIdx.x) * 4 + warp; item < n_items; item += int64_t(gridDim.x) * 4) {
    const int64_t chunk = item / p.chunk;
    const int q_pos = lsh_sorted_pos(p, b, h, item);
    float qr[8], acc[8];
    for (int e = 0; e < 8; ++e) {
      const int d = lane + 32 * e;
      qr[e] = d < p.head_dim ? qk[int64_t(q_pos) * p.qk_seq + d] : 0.0f;
      acc[e] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int u = -p.before; u <= p.after; ++u) {
      const int64_t first = lsh_chunk_start(p, chunk + u);
      for (int j = 0; j < p.chunk; ++j) {
        const int k_pos = lsh_sorted_pos(p, b, h, first + j);
        const float* k = qk + int64_t(k_pos) * p.qk_seq;
        const float* v = vh + int64_t(k_pos) * p.v_seq;
        float dot = 0.0f;
        for (int e = 0; e < 8; ++e) {
          const int d = lane + 32 * e;
          if (d < p.head_dim) dot += qr[e] * k[d];
        }
        const float s = lsh_score(warp_sum(dot), key_scale[k_pos] * kLog2e, q_pos, k_pos,
                                  lsh_is_padding(p, b, k_pos), p.causal);
        const float m_new = fmaxf(m, s);  // finite: every score is
        const float alpha = exp2f(m - m_new), w = exp2f(s - m_new);
        for (int e = 0; e < 8; ++e) {
          const int d = lane + 32 * e;
          acc[e] = acc[e] * alpha + (d < p.head_dim_v ? w * v[d] : 0.0f);
        }
        l = l * alpha + w;
        m = m_new;
      }
    }
    const float inv = 1.0f / l;
    float* dst;
    if (p.rounds > 1) {  // the round's partial (see lsh_fwd.cuh)
      const int64_t prow = lsh_partial_row(p, int(chunk / p.chunks_per_round), b, h, q_pos);
      dst = p.partial_o + prow * p.head_dim_v;
      if (lane == 0) p.partial_ml[2 * prow] = m, p.partial_ml[2 * prow + 1] = l;
    } else {
      dst = static_cast<float*>(p.out) + int64_t(b) * p.o_batch + int64_t(q_pos) * p.o_seq + int64_t(h) * p.o_head;
      if (p.lse && lane == 0)
        p.lse[int64_t(b) * p.lse_batch + int64_t(h) * p.lse_head + q_pos] = 0.6931471805599453f * (m + log2f(l));
    }
    for (int e = 0; e < 8; ++e) {
      const int d = lane + 32 * e;
      if (d < p.head_dim_v) dst[d] = acc[e] * inv;
    }
  }
}

// ---- 4. the combination of the rounds --------------------------------------------------------------------------------
// out = Σ_r w_r · o_r / Σ_r w_r with w_r = 2^(m_r - M) · l_r, M = max_r m_r, and lse = ln2 · (M + log2 Σ_r w_r): the
// log-sum-exp merge of the rounds (LSH step 8) from each round's max and sum, as the CPU does, never from rounded
// per-round lse values. grid: x = row (batch, head, position); threads over the value dim.
template <typename Elem>
__global__ void __launch_bounds__(128) lsh_combine_rounds_kernel(const __grid_constant__ LshFwdParams p) {
  const int64_t row = blockIdx.x, rows = int64_t(p.batch) * p.heads * p.seqlen;
  const int pos = int(row % p.seqlen), h = int((row / p.seqlen) % p.heads), b = int(row / (int64_t(p.seqlen) * p.heads));
  float top = -INFINITY, weights[64], sum = 0.0f;
  for (int r = 0; r < p.rounds; ++r) top = fmaxf(top, p.partial_ml[2 * (r * rows + row)]);
  for (int r = 0; r < p.rounds; ++r) {
    weights[r] = exp2f(p.partial_ml[2 * (r * rows + row)] - top) * p.partial_ml[2 * (r * rows + row) + 1];
    sum += weights[r];
  }
  Elem* out = static_cast<Elem*>(p.out) + int64_t(b) * p.o_batch + int64_t(pos) * p.o_seq + int64_t(h) * p.o_head;
  for (int e = threadIdx.x; e < p.head_dim_v; e += blockDim.x) {
    float acc = 0.0f;
    for (int r = 0; r < p.rounds; ++r) acc += weights[r] * p.partial_o[(r * rows + row) * p.head_dim_v + e];
    out[e] = Elem(acc / sum);
  }
  if (p.lse && threadIdx.x == 0)
    p.lse[int64_t(b) * p.lse_batch + int64_t(h) * p.lse_head + pos] = 0.6931471805599453f * (top + log2f(sum));
}

// ---- host side ------------------------------------------------------------------------------------------------------
const char* kLshSupported =
    "float16 and bfloat16 with head_dim == head_dim_v in {32, 64, 96, 128, 256} (tensor cores), or float32 with "
    "head dims 1..256 (CUDA cores), up to 2^20 buckets, on compute capability 8.0 or newer";
constexpr int64_t kMaxCudaBuckets = int64_t(1) << 20;  // the sort's counts: (kSortWarps, n_buckets + 1) per round

// The call's scratch, in 256-byte aligned pieces; -1 = not needed.
struct LshWorkspaceLayout {
  int64_t key_scale = -1, buckets = -1, sorted = -1, counts = -1, partial_o = -1, partial_ml = -1, total = 0;
  explicit LshWorkspaceLayout(const LshAttentionParams& p) {
    const bool chunked = p.seqlen > p.chunk_length;
    const int64_t BH = p.batch * p.heads, S = p.seqlen, rounds = chunked ? p.n_hashes : 1;
    const auto take = [&](int64_t bytes) {
      const int64_t here = total;
      total += (bytes + 255) / 256 * 256;
      return here;
    };
    key_scale = take(4 * BH * S);
    if (chunked) {
      buckets = take(4 * BH * p.n_hashes * S);
      sorted = take(4 * BH * rounds * S);
      counts = take(4 * BH * p.n_hashes * kSortWarps * (p.n_buckets + 1));
    }
    if (rounds > 1) {
      partial_o = take(4 * rounds * BH * S * p.head_dim_v);
      partial_ml = take(8 * rounds * BH * S);
    }
  }
};

template <typename Elem>
cudaError_t launch_lsh_tensor_core(const LshFwdParams& p, dim3 grid, void* stream) {
  switch (p.head_dim) {
    case 32: return launch_lsh_chunk_fwd<Elem, 32>(p, grid, stream);
    case 64: return launch_lsh_chunk_fwd<Elem, 64>(p, grid, stream);
    case 96: return launch_lsh_chunk_fwd<Elem, 96>(p, grid, stream);
    case 128: return launch_lsh_chunk_fwd<Elem, 128>(p, grid, stream);
    case 256: return launch_lsh_chunk_fwd<Elem, 256>(p, grid, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

int64_t lsh_workspace_bytes(const LshAttentionParams& p) { return LshWorkspaceLayout(p).total; }

Status lsh_attention_forward(const LshAttentionParams& p) {
  const DeviceGuard guard(p.device_index);
  if (Status st = check_current_device(guard, kLshSupported); !st.ok()) return st;
  const bool tensor_cores = p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16;
  const int64_t D = p.head_dim;
  if (tensor_cores && (p.head_dim_v != D || !(D == 32 || D == 64 || D == 96 || D == 128 || D == 256)))
    return Status::Unsupported("head_dim: got head_dim=" + std::to_string(D) + ", head_dim_v=" +
                               std::to_string(p.head_dim_v) + "; lsh_attention on CUDA supports " + kLshSupported);
  if (!tensor_cores && (D < 1 || D > 256 || p.head_dim_v < 1 || p.head_dim_v > 256))
    return Status::Unsupported(std::string("head_dim: lsh_attention on CUDA supports ") + kLshSupported);
  if (tensor_cores && !(rows_16_byte_aligned(p.qk, p.qk_stride, 2) && rows_16_byte_aligned(p.v, p.v_stride, 2)))
    return Status::Invalid("qk, v: the CUDA tensor-core kernel needs 16-byte aligned data pointers and batch, seq "
                           "and head strides that are multiples of 8 elements; copy the tensor (contiguous) first");
  if (p.n_buckets > kMaxCudaBuckets)
    return Status::Unsupported("n_buckets: got " + std::to_string(p.n_buckets) + "; lsh_attention on CUDA supports " +
                               kLshSupported);
  if (p.batch * p.heads > 65535 || p.batch * p.heads * p.seqlen > INT32_MAX)
    return Status::Unsupported("batch * heads: got " + std::to_string(p.batch * p.heads) + " (times seqlen " +
                               std::to_string(p.batch * p.heads * p.seqlen) + "); lsh_attention on CUDA supports up "
                               "to 65535, and up to 2^31 - 1 rows in all (grid dimensions)");
  const LshWorkspaceLayout ws(p);
  if (p.workspace_bytes < ws.total)
    return Status::Invalid("workspace: this call needs " + std::to_string(ws.total) + " bytes of device scratch "
                           "(lsh_attention_workspace_bytes), got " + std::to_string(p.workspace_bytes));

  const bool chunked = p.seqlen > p.chunk_length;
  LshFwdParams f{};
  f.qk = p.qk, f.v = p.v, f.out = p.out, f.lse = p.lse;
  f.qk_batch = p.qk_stride.batch, f.qk_seq = p.qk_stride.seq, f.qk_head = p.qk_stride.head;
  f.v_batch = p.v_stride.batch, f.v_seq = p.v_stride.seq, f.v_head = p.v_stride.head;
  f.o_batch = p.out_stride.batch, f.o_seq = p.out_stride.seq, f.o_head = p.out_stride.head;
  f.lse_batch = p.lse_batch_stride, f.lse_head = p.lse_head_stride;
  f.batch = int(p.batch), f.seqlen = int(p.seqlen), f.heads = int(p.heads);
  f.head_dim = int(p.head_dim), f.head_dim_v = int(p.head_dim_v);
  f.n_hashes = int(p.n_hashes), f.n_buckets = int(p.n_buckets);
  f.rounds = chunked ? int(p.n_hashes) : 1;
  f.chunk = int(chunked ? p.chunk_length : p.seqlen);
  f.before = chunked ? int(p.chunks_before) : 0;
  f.after = chunked ? int(p.chunks_after) : 0;
  f.chunks_per_round = int(p.seqlen / f.chunk);
  f.causal = p.causal;
  const bool hash = !p.buckets_in && (chunked || p.buckets_out);
  f.rotations = hash ? p.rotations : nullptr;
  f.columns = int(lsh_rotation_columns(p));
  if (p.bucket_factors && p.n_bucket_factors > 0) {
    f.n_factors = int(p.n_bucket_factors);
    for (int i = 0; i < f.n_factors; ++i) f.factors[i] = int(p.bucket_factors[i]);
  } else {
    f.n_factors = 1;
    f.factors[0] = int(p.n_buckets);
  }
  f.buckets_in = chunked || p.buckets_out ? p.buckets_in : nullptr;
  f.buckets_out = p.buckets_out;
  f.kpm = p.key_padding_mask, f.kpm_batch = p.mask_batch_stride, f.kpm_seq = p.mask_seq_stride;
  char* scratch = static_cast<char*>(p.workspace);
  const auto piece = [&](int64_t offset) { return offset < 0 ? nullptr : scratch + offset; };
  f.key_scale = reinterpret_cast<float*>(piece(ws.key_scale));
  f.buckets = reinterpret_cast<int32_t*>(piece(ws.buckets));
  f.sorted = reinterpret_cast<int32_t*>(piece(ws.sorted));
  f.counts = reinterpret_cast<int32_t*>(piece(ws.counts));
  f.partial_o = reinterpret_cast<float*>(piece(ws.partial_o));
  f.partial_ml = reinterpret_cast<float*>(piece(ws.partial_ml));

  const unsigned bh = unsigned(p.batch * p.heads);
  const size_t hash_smem = size_t(32) * (p.head_dim + 1) * 4;
  cudaError_t e;
  switch (p.dtype) {
    case DType::kFloat16:
      e = launch<lsh_hash_kernel<__half>>(dim3(unsigned((p.seqlen + 31) / 32), bh), dim3(32), hash_smem, p.stream, f);
      break;
    case DType::kBFloat16:
      e = launch<lsh_hash_kernel<__nv_bfloat16>>(dim3(unsigned((p.seqlen + 31) / 32), bh), dim3(32), hash_smem,
                                                  p.stream, f);
      break;
    default:
      e = launch<lsh_hash_kernel<float>>(dim3(unsigned((p.seqlen + 31) / 32), bh), dim3(32), hash_smem, p.stream, f);
  }
  if (e != cudaSuccess) return cuda_error("CUDA launch of the LSH hashing kernel failed", e);
  if (chunked) {
    e = launch<lsh_sort_kernel>(dim3(bh * unsigned(p.n_hashes)), dim3(kSortWarps * 32), 0, p.stream, f);
    if (e != cudaSuccess) return cuda_error("CUDA launch of the LSH bucket sort failed", e);
  }
  const int64_t items = int64_t(f.rounds) * p.seqlen;
  if (tensor_cores) {
    const int64_t tiles = int64_t(f.rounds) * f.chunks_per_round * ((f.chunk + kBlockM - 1) / kBlockM);
    const dim3 grid(unsigned(std::clamp<int64_t>(tiles, 1, 1 << 24)), bh);
    e = p.dtype == DType::kFloat16 ? launch_lsh_tensor_core<__half>(f, grid, p.stream)
                                   : launch_lsh_tensor_core<__nv_bfloat16>(f, grid, p.stream);
  } else {
    e = launch<lsh_chunk_simt_kernel>(dim3(unsigned(std::clamp<int64_t>((items + 3) / 4, 1, 1 << 24)), bh), dim3(128),
                                      0, p.stream, f);
  }
  if (e != cudaSuccess) return cuda_error("CUDA launch of the LSH chunked attention failed", e);
  if (f.rounds > 1) {
    const dim3 grid(unsigned(p.batch * p.heads * p.seqlen));
    switch (p.dtype) {
      case DType::kFloat16: e = launch<lsh_combine_rounds_kernel<__half>>(grid, dim3(128), 0, p.stream, f); break;
      case DType::kBFloat16:
        e = launch<lsh_combine_rounds_kernel<__nv_bfloat16>>(grid, dim3(128), 0, p.stream, f);
        break;
      default: e = launch<lsh_combine_rounds_kernel<float>>(grid, dim3(128), 0, p.stream, f);
    }
    if (e != cudaSuccess) return cuda_error("CUDA launch of the LSH round combination failed", e);
  }
  return Status::Ok();
}

}  // namespace longattn::LONGATTN_CUDA_NS
