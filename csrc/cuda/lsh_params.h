// The parameters of one CUDA LSH attention call (docs/semantics.md, lsh_attention): plain pointers, sizes, strides and
// the device scratch, built on the host by lsh_backend.cu from LshAttentionParams and passed to every kernel of the
// call by value. No torch.
//
// The call's kernels, in stream order:
//   1. lsh_hash_kernel     per (batch, head, 32 tokens): each key's normalisation, each round's bucket
//   2. lsh_sort_kernel     per (batch, head, round): a stable counting sort by (bucket, position) -> sorted positions
//   3. chunked attention   tensor cores (lsh_fwd.cuh) or CUDA cores (float32), per (batch·head, query tile of a chunk)
//   4. lsh_combine_rounds  the rounds combined by their softmax maxima and sums, when n_hashes > 1
#pragma once

#include <cstdint>

#include "platform.h"

namespace longattn::LONGATTN_CUDA_NS {

constexpr int kLshMaxFactors = 16;
constexpr float kLog2e = 1.4426950408889634f;  // scores are kept in log2 units
constexpr int kSortWarps = 8;  // warps of one sort block; each owns a contiguous segment of the round's tokens

struct LshFwdParams {
  const void* qk;  // (batch, seqlen, heads, head_dim), the dim stride 1
  const void* v;   // (batch, seqlen, heads, head_dim_v)
  void* out;       // (batch, seqlen, heads, head_dim_v)
  float* lse;      // (batch, heads, seqlen)
  int64_t qk_batch, qk_seq, qk_head;  // strides in elements
  int64_t v_batch, v_seq, v_head;
  int64_t o_batch, o_seq, o_head;
  int64_t lse_batch, lse_head;

  int batch, seqlen, heads, head_dim, head_dim_v;
  int n_hashes;           // rounds hashed (buckets per token)
  int n_buckets;          // Π factors; the padding bucket is n_buckets
  int rounds;             // rounds attended: n_hashes, or 1 when seqlen <= chunk_length (no hashing)
  int chunk;              // chunk_length, or seqlen when seqlen <= chunk_length
  int before, after;      // neighbour chunks attended (cyclic over rounds · chunks_per_round)
  int chunks_per_round;   // seqlen / chunk
  bool causal;

  // Hashing: rotations (heads, head_dim, n_hashes, columns) float32; factor i owns columns [Σ_{j<i} f_j / 2, + f_i / 2).
  const float* rotations;  // null: no hashing (buckets_in given, or nothing to hash)
  int columns;
  int n_factors;
  int factors[kLshMaxFactors];
  const int64_t* buckets_in;  // (batch, heads, n_hashes, seqlen) or null; clamped to [0, n_buckets] (not checked)
  int64_t* buckets_out;       // (batch, heads, n_hashes, seqlen) or null
  const uint8_t* kpm;         // key padding (batch, seqlen), nonzero = real, or null
  int64_t kpm_batch, kpm_seq;

  // Scratch (workspace): null where the call does not need it.
  int32_t* buckets;    // (batch, heads, n_hashes, seqlen)
  int32_t* sorted;     // (batch, heads, rounds · seqlen): original position of each sorted item; null = identity
  float* key_scale;    // (batch, heads, seqlen): rsqrt(mean(qk²) + 1e-6) / sqrt(D)
  int32_t* counts;     // (batch · heads · n_hashes, kSortWarps, n_buckets + 1): per-warp bucket counts, then starts
  // rounds > 1: each round's normalised output, and its softmax max m (log2 units) and sum l (the round's lse is
  // ln2 · (m + log2 l)); kept apart so that rows whose scores are all near -1e5 combine exactly (a float32 lse there
  // has a spacing of 2^-7).
  float* partial_o;    // (rounds, batch, heads, seqlen, head_dim_v)
  float* partial_ml;   // (rounds, batch, heads, seqlen, 2): m, l
};

// Original position of sorted item `idx` (0 .. rounds · seqlen - 1) of (batch b, head h).
__device__ __forceinline__ int lsh_sorted_pos(const LshFwdParams& p, int b, int h, int64_t idx) {
  return p.sorted ? p.sorted[(int64_t(b) * p.heads + h) * p.rounds * p.seqlen + idx] : int(idx);
}

__device__ __forceinline__ bool lsh_is_padding(const LshFwdParams& p, int b, int pos) {
  return p.kpm && p.kpm[int64_t(b) * p.kpm_batch + int64_t(pos) * p.kpm_seq] == 0;
}

// The first sorted item of chunk `chunk` (any integer: chunks wrap cyclically over every round's chunks).
__device__ __forceinline__ int64_t lsh_chunk_start(const LshFwdParams& p, int64_t chunk) {
  const int64_t n = int64_t(p.rounds) * p.chunks_per_round;
  return ((chunk % n) + n) % n * p.chunk;
}

// The LSH score rule (step 6) in log2 units: the raw score q·k times the key's normalisation (key_scale_log2 =
// key_scale · log2 e), replaced by -1e9 for a padding key or (causal) a later key, then by -1e5 for the query's own
// position. The constants are float32 products as on the CPU.
__device__ __forceinline__ float lsh_score(float dot, float key_scale_log2, int q_pos, int k_pos, bool k_padding,
                                           bool causal) {
  float s = dot * key_scale_log2;
  if (k_padding || (causal && k_pos > q_pos)) s = -1e9f * kLog2e;
  if (k_pos == q_pos) s = -1e5f * kLog2e;
  return s;
}

// Where round r's result for token `pos` goes (rounds > 1), or the output row (rounds == 1).
__device__ __forceinline__ int64_t lsh_partial_row(const LshFwdParams& p, int r, int b, int h, int pos) {
  return ((int64_t(r) * p.batch + b) * p.heads + h) * p.seqlen + pos;
}

// Launches the tensor-core chunk kernel lsh_chunk_fwd_kernel<Elem, D> (lsh_fwd.cuh) on `stream`.
template <typename Elem, int D>
cudaError_t launch_lsh_chunk_fwd(const LshFwdParams& p, dim3 grid, void* stream);

}  // namespace longattn::LONGATTN_CUDA_NS
