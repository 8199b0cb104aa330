// The parameters of one CUDA attention launch: plain pointers, sizes and strides, no torch. Built on the host by
// cuda_backend.cu from AttentionParams and passed to the kernels by value; the device-side helpers below read the
// per-sequence geometry (variable-length offsets, KV-cache lengths, paged rows) with every value bounded, so a bad
// index tensor gives a wrong row, never an access outside the tensors.
#pragma once

#include <cstdint>

#include "platform.h"

namespace longattn::LONGATTN_CUDA_NS {

constexpr int kMaxDilationHeads = 256;  // per-head dilation travels in the kernel parameters

struct FlashFwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;  // may be null

  int64_t q_batch, q_seq, q_head;  // strides in elements; the dim stride is 1
  int64_t k_batch, k_seq, k_head;  // paged cache: k_batch is the block stride
  int64_t v_batch, v_seq, v_head;
  int64_t o_batch, o_seq, o_head;
  int64_t lse_batch, lse_head;

  int batch, seqlen_q, seqlen_k, heads_q, heads_k, head_dim, head_dim_v;
  int kv_group;       // heads_q / heads_k
  int group;          // query heads packed per view (grouped-query packing), 1 = none; grid z = batch · heads_q / group
  float scale_log2;   // scale · log2(e): scores are kept in log2 units
  int window_left;    // -1 = unbounded
  int window_right;   // -1 = unbounded; causal is folded in as 0

  // Dilation: uniform_dilation > 0 means every head uses it; else dilation[h] per query head.
  int uniform_dilation;
  int dilation[kMaxDilationHeads];
  int residue_slots;  // residue classes per head (min(max dilation, seqlen_q)); slot residue_slots = the global rows
  int slot_base;      // slot of blockIdx.y == 0 (0 for the residue-class launch, residue_slots for the global rows)

  // Global tokens (self-attention only): the bytes (batch, seqlen) with strides, and the per-batch ascending index
  // lists built on the device by build_global_index: global_index[b * seqlen_k + i], global_count[b].
  const uint8_t* global_tokens;
  int64_t global_batch, global_seq;
  const int32_t* global_index;
  const int32_t* global_count;

  // Serving options: softcap2 = softcap · log2(e) and softcap_scale = scale / softcap (0: no soft-capping); sinks
  // (heads_q float32) or null; key padding bytes (batch, seqlen_k), nonzero = real, or null.
  float softcap2, softcap_scale;
  const float* sinks;
  const uint8_t* kpm;
  int64_t kpm_batch, kpm_seq;

  // Variable-length batch: offsets (batch + 1) into the packed q / out (total_q rows) and k / v (total_k rows).
  const int32_t* cu_q;
  const int32_t* cu_k;
  int64_t total_q, total_k;

  // KV cache: sequence b has min(cache_seqlens[b] + seqlen_new, seqlen_k) keys (seqlen_k = the capacity); paged:
  // token t in block block_table[b * bt_stride + t / page_size] (a block index outside [0, num_blocks) reads zeros).
  const int32_t* cache_seqlens;
  const int32_t* block_table;
  int64_t bt_stride;
  int num_blocks, page_size, seqlen_new;

  // Key splits (grid y): split s covers keys [s · split_chunk, (s + 1) · split_chunk) and writes its normalised partial
  // output and lse to partial_o / partial_lse at row ((s · batch + b) · heads_q + h) · seqlen_q + i.
  int n_splits;
  int split_chunk;
  float* partial_o;
  float* partial_lse;
};

// Where sequence b's rows are and how long it is (dense layout, packed variable-length batch, or KV cache).
struct SequenceRows {
  int n_q, n_k;
  int64_t q_first, k_first;
};

// The sum of x over the 32 lanes of a warp, in every lane.
__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ int64_t clamp64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); }

__device__ __forceinline__ SequenceRows sequence_rows(const FlashFwdParams& p, int b) {
  SequenceRows s{p.seqlen_q, p.seqlen_k, 0, 0};
  if (p.cu_q) {  // offsets bounded by the packed tensors' rows
    const int64_t q0 = clamp64(p.cu_q[b], 0, p.total_q), q1 = clamp64(p.cu_q[b + 1], q0, p.total_q);
    const int64_t k0 = clamp64(p.cu_k[b], 0, p.total_k), k1 = clamp64(p.cu_k[b + 1], k0, p.total_k);
    s.q_first = q0, s.k_first = k0;
    s.n_q = int(q1 - q0), s.n_k = int(k1 - k0);
  } else if (p.cache_seqlens) {
    s.n_k = int(clamp64(int64_t(p.cache_seqlens[b]) + p.seqlen_new, 0, p.seqlen_k));
  }
  return s;
}

// Element offsets of row i (queries) / key j of sequence b, head h; -1: a row to read as zeros (a bad block index).
__device__ __forceinline__ int64_t q_offset(const FlashFwdParams& p, const SequenceRows& s, int b, int h, int i) {
  return (p.cu_q ? (s.q_first + i) * p.q_seq : int64_t(b) * p.q_batch + int64_t(i) * p.q_seq) + int64_t(h) * p.q_head;
}
__device__ __forceinline__ int64_t o_offset(const FlashFwdParams& p, const SequenceRows& s, int b, int h, int i) {
  return (p.cu_q ? (s.q_first + i) * p.o_seq : int64_t(b) * p.o_batch + int64_t(i) * p.o_seq) + int64_t(h) * p.o_head;
}
__device__ __forceinline__ int64_t lse_offset(const FlashFwdParams& p, const SequenceRows& s, int b, int h, int i) {
  return (p.cu_q ? s.q_first + i : int64_t(b) * p.lse_batch + i) + int64_t(h) * p.lse_head;
}
__device__ __forceinline__ int64_t kv_offset(const FlashFwdParams& p, const SequenceRows& s, int b, int hk, int j,
                                             int64_t batch_stride, int64_t seq_stride, int64_t head_stride) {
  if (p.block_table) {
    const int32_t blk = p.block_table[int64_t(b) * p.bt_stride + j / p.page_size];
    if (blk < 0 || blk >= p.num_blocks) return -1;
    return int64_t(blk) * batch_stride + int64_t(j % p.page_size) * seq_stride + int64_t(hk) * head_stride;
  }
  return (p.cu_q ? (s.k_first + j) * seq_stride : int64_t(b) * batch_stride + int64_t(j) * seq_stride) +
         int64_t(hk) * head_stride;
}
__device__ __forceinline__ bool key_is_real(const FlashFwdParams& p, int b, int j) {
  return !p.kpm || p.kpm[int64_t(b) * p.kpm_batch + int64_t(j) * p.kpm_seq] != 0;
}

}  // namespace longattn::LONGATTN_CUDA_NS
