// The parameters of one CUDA attention launch: plain pointers, sizes and strides, no torch. Built on the host by
// cuda_backend.cu from AttentionParams and passed to the kernels by value.
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
  int64_t k_batch, k_seq, k_head;
  int64_t v_batch, v_seq, v_head;
  int64_t o_batch, o_seq, o_head;
  int64_t lse_batch, lse_head;

  int batch, seqlen_q, seqlen_k, heads_q, heads_k, head_dim, head_dim_v;
  int kv_group;       // heads_q / heads_k
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
};

}  // namespace longattn::LONGATTN_CUDA_NS
