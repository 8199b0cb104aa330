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
  const int64_t k_sizes[4] = {p.batch, p.seqlen_k, p.heads_k, p.head_dim};
  const int64_t v_sizes[4] = {p.batch, p.seqlen_k, p.heads_k, p.head_dim_v};
  const int64_t o_sizes[4] = {p.batch, p.seqlen_q, p.heads_q, p.head_dim_v};
  auto strides = [](const BshdStrides& s, int64_t (&out)[4]) {
    out[0] = s.batch, out[1] = s.seq, out[2] = s.head, out[3] = 1;
    return out;
  };
  int64_t st[4];
  session.add_strided("q", p.q, elem, q_sizes, strides(p.q_stride, st), 4, false);
  session.add_strided("k", p.k, elem, k_sizes, strides(p.k_stride, st), 4, false);
  session.add_strided("v", p.v, elem, v_sizes, strides(p.v_stride, st), 4, false);
  session.add_strided("out", p.out, elem, o_sizes, strides(p.out_stride, st), 4, true);
  if (p.lse) {
    const int64_t sizes[3] = {p.batch, p.heads_q, p.seqlen_q}, lse_strides[3] = {p.lse_batch_stride, p.lse_head_stride, 1};
    session.add_strided("lse", p.lse, 4, sizes, lse_strides, 3, true);
  }
  if (p.global_tokens) {
    const int64_t sizes[2] = {p.batch, p.seqlen_k}, g_strides[2] = {p.global_batch_stride, p.global_seq_stride};
    session.add_strided("global_tokens", p.global_tokens, 1, sizes, g_strides, 2, false);
  }
  session.add("workspace", p.workspace, size_t(p.workspace_bytes), true);
  return cuda_emulated::attention_forward(p);
}

}  // namespace longattn::cuda_emulated
