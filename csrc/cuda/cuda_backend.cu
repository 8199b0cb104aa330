// The CUDA backend: checks what this build and device support, builds FlashFwdParams, and launches on the caller's
// stream. No device synchronisation and no allocation: scratch (the global-token index) comes from the caller
// (AttentionParams::workspace, sized by attention_workspace_bytes), so CUDA-graph capture works.
#include <algorithm>
#include <string>

#include "cuda_backend.h"
#include "cuda_host.h"
#include "flash_fwd.cuh"
#include "flash_params.h"
#include "platform.h"

namespace longattn::LONGATTN_CUDA_NS {

cudaError_t launch_simt_fwd(const FlashFwdParams& p, void* stream);
cudaError_t launch_append_kv(const FlashFwdParams& p, const void* k_new, const void* v_new,
                             const int64_t* kn_strides, const int64_t* vn_strides, int elem_bytes, void* stream);
cudaError_t launch_merge_splits(const FlashFwdParams& p, int dtype, void* stream);
cudaError_t launch_build_global_index(const uint8_t* tokens, int64_t batch_stride, int64_t seq_stride, int batch,
                                      int seqlen, int32_t* index, int32_t* count, void* stream);

namespace {

const char* kSupported =
    "float16 and bfloat16 with head_dim == head_dim_v in {32, 64, 96, 128, 256} (tensor cores), or float32 with "
    "head dims 1..256 (CUDA cores, exact float32), on compute capability 8.0 or newer";

template <typename Elem>
cudaError_t launch_tensor_core(const FlashFwdParams& p, int head_dim, dim3 grid, void* stream) {
  switch (head_dim) {
    case 32: return launch_flash_fwd<Elem, 32>(p, grid, stream);
    case 64: return launch_flash_fwd<Elem, 64>(p, grid, stream);
    case 96: return launch_flash_fwd<Elem, 96>(p, grid, stream);
    case 128: return launch_flash_fwd<Elem, 128>(p, grid, stream);
    case 256: return launch_flash_fwd<Elem, 256>(p, grid, stream);
  }
  return cudaErrorInvalidValue;
}

// Grouped-query packing: the query heads of a key/value head share each key tile, unless per-head dilation or global
// tokens give them different keys.
int packing_group(const AttentionParams& p) {
  if (p.global_tokens) return 1;
  for (int64_t h = 0; p.dilation && h < p.heads_q; ++h)
    if (p.dilation[h] != 1) return 1;
  return int(p.heads_q / p.heads_k);
}

// Key splits of a KV-cache call: num_splits, or for 0 enough to give every SM a block (with pieces of at least 256
// keys of the capacity: the cache lengths are on the device and are not read back).
int choose_splits(const AttentionParams& p) {
  if (!p.cache_seqlens) return 1;
  if (p.num_splits > 0) return p.num_splits;
  int device = 0, sms = 108;
  if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) !=
                                                   cudaSuccess)
    sms = 108;
  const int64_t group = p.dtype == DType::kFloat32 ? 1 : packing_group(p);
  const int64_t tiles = p.dtype == DType::kFloat32 ? (p.seqlen_q + 3) / 4 : (p.seqlen_q * group + kBlockM - 1) / kBlockM;
  const int64_t blocks = p.batch * (p.heads_q / group) * tiles;
  if (blocks >= sms) return 1;
  return int(std::clamp<int64_t>((sms + blocks - 1) / blocks, 1, std::max<int64_t>(1, std::min<int64_t>(64, p.seqlen_k / 256))));
}

// Device scratch: the global-token index, then the key splits' partial outputs and lses.
struct WorkspaceLayout {
  int64_t global_bytes = 0, partial_o = 0, partial_lse = 0, total = 0;
  explicit WorkspaceLayout(const AttentionParams& p) {
    if (p.global_tokens) global_bytes = 4 * (p.batch * p.seqlen_k + p.batch);  // int32 index (B, Sk) + count (B)
    const int splits = choose_splits(p);
    if (splits > 1) {
      const int64_t rows = int64_t(splits) * p.batch * p.heads_q * p.seqlen_q;
      partial_o = (global_bytes + 15) / 16 * 16;
      partial_lse = partial_o + 4 * rows * p.head_dim_v;
      total = partial_lse + 4 * rows;
    } else {
      total = global_bytes;
    }
  }
};

}  // namespace

int64_t workspace_bytes(const AttentionParams& p) { return WorkspaceLayout(p).total; }

Status attention_forward(const AttentionParams& p) {
  const DeviceGuard guard(p.device_index);
  if (Status st = check_current_device(guard, kSupported); !st.ok()) return st;
  const bool tensor_cores = p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16;
  if (tensor_cores) {
    const int64_t D = p.head_dim;
    if (p.head_dim_v != D || !(D == 32 || D == 64 || D == 96 || D == 128 || D == 256))
      return Status::Unsupported("head_dim: got head_dim=" + std::to_string(D) + ", head_dim_v=" +
                                 std::to_string(p.head_dim_v) + "; the CUDA backend supports " + kSupported);
  } else if (p.head_dim > 256 || p.head_dim_v > 256) {
    return Status::Unsupported(std::string("head_dim: the CUDA backend supports ") + kSupported);
  }
  if (tensor_cores && !(rows_16_byte_aligned(p.q, p.q_stride, 2) && rows_16_byte_aligned(p.k, p.k_stride, 2) &&
                       rows_16_byte_aligned(p.v, p.v_stride, 2)))
    return Status::Invalid("q, k, v: the CUDA tensor-core kernel needs 16-byte aligned data pointers and batch, "
                           "seq and head strides that are multiples of 8 elements; copy the tensor (contiguous) "
                           "first");
  if (p.seqlen_q > INT32_MAX / 2 || p.seqlen_k > INT32_MAX / 2 || p.batch * p.heads_q > INT32_MAX / 2)
    return Status::Unsupported("sizes: the CUDA backend indexes sequences and batch*heads with 31-bit integers");
  // Dilation over the query heads: all equal?, the largest and the smallest.
  bool uniform = true;
  int64_t max_dilation = 1, min_dilation = p.dilation ? p.dilation[0] : 1;
  for (int64_t h = 0; p.dilation && h < p.heads_q; ++h) {
    uniform = uniform && p.dilation[h] == p.dilation[0];
    max_dilation = std::max(max_dilation, p.dilation[h]);
    min_dilation = std::min(min_dilation, p.dilation[h]);
  }
  if (!uniform && p.heads_q > kMaxDilationHeads)
    return Status::Unsupported("dilation: per-head dilation on CUDA supports up to " +
                               std::to_string(kMaxDilationHeads) + " query heads; got " + std::to_string(p.heads_q));
  if (p.batch * p.heads_q > 65535)
    return Status::Unsupported("batch * heads_q: got " + std::to_string(p.batch * p.heads_q) +
                               "; the CUDA backend supports up to 65535 (one grid dimension)");
  const WorkspaceLayout ws(p);
  if (p.workspace_bytes < ws.total)
    return Status::Invalid("workspace: this call needs " + std::to_string(ws.total) + " bytes of device scratch "
                           "(attention_workspace_bytes: global-token index and key-split partials), got " +
                           std::to_string(p.workspace_bytes));
  if (p.cache_seqlens && (p.seqlen_new > INT32_MAX / 2 || p.batch > 65535))
    return Status::Unsupported("k_new, batch: the CUDA append indexes tokens with 31 bits and batch up to 65535");

  FlashFwdParams f{};
  f.q = p.q;
  f.k = p.k;
  f.v = p.v;
  f.out = p.out;
  f.lse = p.lse;
  f.q_batch = p.q_stride.batch, f.q_seq = p.q_stride.seq, f.q_head = p.q_stride.head;
  f.k_batch = p.k_stride.batch, f.k_seq = p.k_stride.seq, f.k_head = p.k_stride.head;
  f.v_batch = p.v_stride.batch, f.v_seq = p.v_stride.seq, f.v_head = p.v_stride.head;
  f.o_batch = p.out_stride.batch, f.o_seq = p.out_stride.seq, f.o_head = p.out_stride.head;
  f.lse_batch = p.lse_batch_stride, f.lse_head = p.lse_head_stride;
  f.batch = int(p.batch), f.seqlen_q = int(p.seqlen_q), f.seqlen_k = int(p.seqlen_k);
  f.heads_q = int(p.heads_q), f.heads_k = int(p.heads_k), f.head_dim = int(p.head_dim);
  f.head_dim_v = int(p.head_dim_v);
  f.kv_group = int(p.heads_q / p.heads_k);
  f.scale_log2 = p.scale * 1.4426950408889634f;
  f.window_left = int(std::max<int64_t>(-1, std::min<int64_t>(p.window_left, INT32_MAX / 2)));
  f.window_right = p.causal ? 0 : int(std::max<int64_t>(-1, std::min<int64_t>(p.window_right, INT32_MAX / 2)));
  if (uniform) {
    f.uniform_dilation = int(std::min<int64_t>(p.dilation ? p.dilation[0] : 1, INT32_MAX / 2));
  } else {
    for (int64_t h = 0; h < p.heads_q; ++h) f.dilation[h] = int(std::min<int64_t>(p.dilation[h], INT32_MAX / 2));
  }
  f.residue_slots = int(std::max<int64_t>(1, std::min<int64_t>(max_dilation, p.seqlen_q)));
  f.group = tensor_cores ? packing_group(p) : 1;
  f.softcap2 = p.softcap > 0.0f ? p.softcap * 1.4426950408889634f : 0.0f;
  f.softcap_scale = p.softcap > 0.0f ? p.scale / p.softcap : 0.0f;
  f.sinks = p.sinks;
  f.kpm = p.key_padding_mask;
  f.kpm_batch = p.mask_batch_stride;
  f.kpm_seq = p.mask_seq_stride;
  f.cu_q = p.cu_seqlens_q;
  f.cu_k = p.cu_seqlens_k;
  f.total_q = p.total_q;
  f.total_k = p.total_k;
  f.cache_seqlens = p.cache_seqlens;
  f.block_table = p.block_table;
  f.bt_stride = p.block_table_stride;
  f.num_blocks = int(std::min<int64_t>(p.num_blocks, INT32_MAX));
  f.page_size = int(std::max<int64_t>(1, p.page_size));
  f.seqlen_new = int(p.seqlen_new);
  f.n_splits = choose_splits(p);
  f.split_chunk = int((p.seqlen_k + int64_t(64) * f.n_splits - 1) / (int64_t(64) * f.n_splits) * 64);
  if (f.n_splits > 1) {
    f.partial_o = reinterpret_cast<float*>(static_cast<char*>(p.workspace) + ws.partial_o);
    f.partial_lse = reinterpret_cast<float*>(static_cast<char*>(p.workspace) + ws.partial_lse);
  }

  cudaError_t e = cudaSuccess;
  // KV cache: the new rows first (in stream order, so the attention below sees them).
  if (p.cache_seqlens && p.k_new && p.seqlen_new > 0 && p.batch > 0) {
    const int64_t kn[3] = {p.k_new_stride.batch, p.k_new_stride.seq, p.k_new_stride.head};
    const int64_t vn[3] = {p.v_new_stride.batch, p.v_new_stride.seq, p.v_new_stride.head};
    e = launch_append_kv(f, p.k_new, p.v_new, kn, vn, p.dtype == DType::kFloat32 ? 4 : 2, p.stream);
    if (e != cudaSuccess) return cuda_error("CUDA launch of the KV-cache append failed", e);
  }
  if (p.batch == 0 || p.seqlen_q == 0) return Status::Ok();
  if (f.residue_slots >= 65535)
    return Status::Unsupported("dilation: got " + std::to_string(max_dilation) + " with seqlen_q=" +
                               std::to_string(p.seqlen_q) + "; the CUDA backend supports fewer than 65535 residue "
                               "classes (min(dilation, seqlen_q))");

  if (p.global_tokens) {  // (the global tokens' index occupies the start of the workspace)
    f.global_tokens = p.global_tokens;
    f.global_batch = p.global_batch_stride;
    f.global_seq = p.global_seq_stride;
    int32_t* index = static_cast<int32_t*>(p.workspace);
    int32_t* count = index + p.batch * p.seqlen_k;
    e = launch_build_global_index(p.global_tokens, p.global_batch_stride, p.global_seq_stride, int(p.batch),
                                  int(p.seqlen_k), index, count, p.stream);
    if (e != cudaSuccess) return cuda_error("CUDA launch of the global-token index failed", e);
    f.global_index = index;
    f.global_count = count;
  }

  const auto merge = [&]() -> Status {
    if (f.n_splits <= 1) return Status::Ok();
    const cudaError_t me = launch_merge_splits(f, int(p.dtype), p.stream);
    return me == cudaSuccess ? Status::Ok() : cuda_error("CUDA launch of the key-split merge failed", me);
  };
  if (!tensor_cores) {
    e = launch_simt_fwd(f, p.stream);
    if (e != cudaSuccess) return cuda_error("CUDA launch of the float32 kernel failed", e);
    return merge();
  }
  // Residue classes: x = query tiles of the largest class (that of the smallest dilation; with packing the group's
  // query heads), y = class slot or key split, z = batch x query heads / group. Global query rows: their own launch,
  // x = tiles of up to seqlen_q rows. (x is capped: a block loops over its tiles.)
  const int64_t class_rows = (p.seqlen_q + min_dilation - 1) / min_dilation * f.group;
  const auto launch = [&](dim3 grid) {
    return p.dtype == DType::kFloat16 ? launch_tensor_core<__half>(f, int(p.head_dim), grid, p.stream)
                                      : launch_tensor_core<__nv_bfloat16>(f, int(p.head_dim), grid, p.stream);
  };
  const auto tiles = [](int64_t rows) { return unsigned(std::clamp<int64_t>((rows + kBlockM - 1) / kBlockM, 1, 1 << 20)); };
  f.slot_base = 0;
  e = launch(dim3(tiles(class_rows), unsigned(f.n_splits > 1 ? f.n_splits : f.residue_slots),
                  unsigned(p.batch * p.heads_q / f.group)));
  if (e != cudaSuccess) return cuda_error("CUDA launch of the attention kernel failed", e);
  if (p.global_tokens) {
    f.slot_base = f.residue_slots;
    e = launch(dim3(tiles(p.seqlen_q), 1u, unsigned(p.batch * p.heads_q)));
    if (e != cudaSuccess) return cuda_error("CUDA launch of the global-rows attention kernel failed", e);
  }
  return merge();
}

}  // namespace longattn::LONGATTN_CUDA_NS
