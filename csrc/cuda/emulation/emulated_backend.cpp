// Device::kCudaEmulator: the CUDA backend compiled for the host (namespace cuda_emulated), called with the buffers of
// the call registered for the emulator's memory checker — each tensor as the span its sizes and strides cover, so a
// kernel that reads past a view is caught even inside the allocation.
#include "../cuda_backend.h"
#include "session.h"

namespace longattn::cuda_emulated {

Status run_on_emulator(const AttentionParams& p) {
  emulator::Session session;
  const size_t elem = p.dtype == DType::kFloat32 ? 4 : 2;
  const int64_t q_sizes[4] = {p.batch, p.seqlen_q, p.heads_q, p.head_dim};
  const int64_t o_sizes[4] = {p.batch, p.seqlen_q, p.heads_q, p.head_dim_v};
  auto strides = [](const BshdStrides& s, int64_t (&out)[4]) {
    out[0] = s.batch, out[1] = s.seq, out[2] = s.head, out[3] = 1;
    return out;
  };
  int64_t st[4];
  const bool varlen = p.cu_seqlens_q != nullptr, kvcache = p.cache_seqlens != nullptr;
  if (varlen) {  // packed (total, heads, dim) tensors: no batch dimension
    const int64_t qs[3] = {p.total_q, p.heads_q, p.head_dim}, ks[3] = {p.total_k, p.heads_k, p.head_dim};
    const int64_t vs[3] = {p.total_k, p.heads_k, p.head_dim_v}, os[3] = {p.total_q, p.heads_q, p.head_dim_v};
    const auto packed = [](const BshdStrides& s, int64_t (&out)[4]) {
      out[0] = s.seq, out[1] = s.head, out[2] = 1;
      return out;
    };
    session.add_strided("q", p.q, elem, qs, packed(p.q_stride, st), 3, false);
    session.add_strided("k", p.k, elem, ks, packed(p.k_stride, st), 3, false);
    session.add_strided("v", p.v, elem, vs, packed(p.v_stride, st), 3, false);
    session.add_strided("out", p.out, elem, os, packed(p.out_stride, st), 3, true);
    const int64_t ls[2] = {p.heads_q, p.total_q}, lst[2] = {p.lse_head_stride, 1};
    if (p.lse) session.add_strided("lse", p.lse, 4, ls, lst, 2, true);
    session.add("cu_seqlens_q", p.cu_seqlens_q, size_t(p.batch + 1) * 4, false);
    session.add("cu_seqlens_k", p.cu_seqlens_k, size_t(p.batch + 1) * 4, false);
  } else {
    session.add_strided("q", p.q, elem, q_sizes, strides(p.q_stride, st), 4, false);
    session.add_strided("out", p.out, elem, o_sizes, strides(p.out_stride, st), 4, true);
    if (p.lse) {
      const int64_t sizes[3] = {p.batch, p.heads_q, p.seqlen_q}, lse_strides[3] = {p.lse_batch_stride, p.lse_head_stride, 1};
      session.add_strided("lse", p.lse, 4, sizes, lse_strides, 3, true);
    }
    // A KV cache is written in place (the append); a paged one is (num_blocks, page_size, heads_k, dim).
    int64_t ck[4] = {p.batch, p.seqlen_k, p.heads_k, p.head_dim}, cv[4] = {p.batch, p.seqlen_k, p.heads_k, p.head_dim_v};
    if (p.block_table) ck[0] = cv[0] = p.num_blocks, ck[1] = cv[1] = p.page_size;
    session.add_strided("k", p.k, elem, ck, strides(p.k_stride, st), 4, kvcache);
    session.add_strided("v", p.v, elem, cv, strides(p.v_stride, st), 4, kvcache);
  }
  if (kvcache) {
    session.add("cache_seqlens", p.cache_seqlens, size_t(p.batch) * 4, false);
    if (p.block_table) session.add("block_table", p.block_table, size_t(p.batch * p.block_table_stride) * 4, false);
    const int64_t kn[4] = {p.batch, p.seqlen_new, p.heads_k, p.head_dim}, vn[4] = {p.batch, p.seqlen_new, p.heads_k, p.head_dim_v};
    if (p.k_new) session.add_strided("k_new", p.k_new, elem, kn, strides(p.k_new_stride, st), 4, false);
    if (p.v_new) session.add_strided("v_new", p.v_new, elem, vn, strides(p.v_new_stride, st), 4, false);
  }
  session.add("sinks", p.sinks, size_t(p.heads_q) * 4, false);
  if (p.key_padding_mask) {
    const int64_t sizes[2] = {p.batch, p.seqlen_k}, m_strides[2] = {p.mask_batch_stride, p.mask_seq_stride};
    session.add_strided("key_padding_mask", p.key_padding_mask, 1, sizes, m_strides, 2, false);
  }
  if (p.global_tokens) {
    const int64_t sizes[2] = {p.batch, p.seqlen_k}, g_strides[2] = {p.global_batch_stride, p.global_seq_stride};
    session.add_strided("global_tokens", p.global_tokens, 1, sizes, g_strides, 2, false);
  }
  session.add("workspace", p.workspace, size_t(p.workspace_bytes), true);
  return cuda_emulated::attention_forward(p);
}

Status run_lsh_on_emulator(const LshAttentionParams& p) {
  emulator::Session session;
  const size_t elem = p.dtype == DType::kFloat32 ? 4 : 2;
  const auto bshd = [](const BshdStrides& s, int64_t (&out)[4]) {
    out[0] = s.batch, out[1] = s.seq, out[2] = s.head, out[3] = 1;
    return out;
  };
  int64_t st[4];
  const int64_t qk_sizes[4] = {p.batch, p.seqlen, p.heads, p.head_dim};
  const int64_t v_sizes[4] = {p.batch, p.seqlen, p.heads, p.head_dim_v};
  session.add_strided("qk", p.qk, elem, qk_sizes, bshd(p.qk_stride, st), 4, false);
  session.add_strided("v", p.v, elem, v_sizes, bshd(p.v_stride, st), 4, false);
  session.add_strided("out", p.out, elem, v_sizes, bshd(p.out_stride, st), 4, true);
  if (p.lse) {
    const int64_t sizes[3] = {p.batch, p.heads, p.seqlen}, lse_strides[3] = {p.lse_batch_stride, p.lse_head_stride, 1};
    session.add_strided("lse", p.lse, 4, sizes, lse_strides, 3, true);
  }
  const size_t bucket_bytes = size_t(p.batch * p.heads * p.n_hashes * p.seqlen) * 8;
  if (p.rotations)
    session.add("rotations", p.rotations, size_t(p.heads * p.head_dim * p.n_hashes * lsh_rotation_columns(p)) * 4,
                false);
  if (p.buckets_in) session.add("buckets", p.buckets_in, bucket_bytes, false);
  if (p.buckets_out) session.add("buckets_out", p.buckets_out, bucket_bytes, true);
  if (p.key_padding_mask) {
    const int64_t sizes[2] = {p.batch, p.seqlen}, m_strides[2] = {p.mask_batch_stride, p.mask_seq_stride};
    session.add_strided("key_padding_mask", p.key_padding_mask, 1, sizes, m_strides, 2, false);
  }
  session.add("workspace", p.workspace, size_t(p.workspace_bytes), true);
  return cuda_emulated::lsh_attention_forward(p);
}

}  // namespace longattn::cuda_emulated
