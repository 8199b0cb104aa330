// Argument checks shared by every backend. Messages name the field, the value and what is accepted, because the
// Python layer passes them through verbatim for anything it did not already reject.
#include <cmath>
#include <sstream>
#include <initializer_list>
#include <tuple>
#include <utility>

#include "longattn/longattn.h"

namespace longattn {
namespace {

template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

// Every stride the kernels step by must be >= 0: a negative one would walk before the tensor's first element, where
// the bounds the kernels keep assume it starts (torch tensors never have negative strides; a C++ caller could).
Status check_strides(std::initializer_list<std::pair<const char*, int64_t>> strides) {
  for (const auto& [name, value] : strides)
    if (value < 0)
      return Status::Invalid(cat(name, ": got the negative stride ", value, "; longattn takes strides >= 0 (a "
                                 "reversed view must be copied first)"));
  return Status::Ok();
}

Status check_bshd_strides(const char* name, const BshdStrides& s) {
  const std::string b = std::string(name) + ".batch", q = std::string(name) + ".seq", h = std::string(name) + ".head";
  return check_strides({{b.c_str(), s.batch}, {q.c_str(), s.seq}, {h.c_str(), s.head}});
}

}  // namespace

Status check_params(const AttentionParams& p) {
  if (p.dtype != DType::kFloat32 && p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return Status::Invalid(cat("dtype: got ", int(p.dtype), ", expected float32, float16 or bfloat16"));
  if (p.device != Device::kCpu && p.device != Device::kCuda && p.device != Device::kCudaEmulator)
    return Status::Invalid(cat("device: got ", int(p.device), ", expected cpu, cuda or cuda_emulator"));
  const struct { const char* name; int64_t value; } sizes[] = {
      {"batch", p.batch},     {"seqlen_q", p.seqlen_q}, {"seqlen_k", p.seqlen_k},     {"heads_q", p.heads_q},
      {"heads_k", p.heads_k}, {"head_dim", p.head_dim}, {"head_dim_v", p.head_dim_v}};
  for (const auto& s : sizes)
    if (s.value < 0) return Status::Invalid(cat(s.name, ": got ", s.value, ", expected a size >= 0"));
  for (const auto& [name, strides] : {std::pair<const char*, const BshdStrides&>{"q_stride", p.q_stride},
                                      {"k_stride", p.k_stride}, {"v_stride", p.v_stride},
                                      {"out_stride", p.out_stride}, {"k_new_stride", p.k_new_stride},
                                      {"v_new_stride", p.v_new_stride}})
    if (Status st = check_bshd_strides(name, strides); !st.ok()) return st;
  if (Status st = check_strides({{"lse_batch_stride", p.lse_batch_stride}, {"lse_head_stride", p.lse_head_stride},
                                 {"global_batch_stride", p.global_batch_stride},
                                 {"global_seq_stride", p.global_seq_stride},
                                 {"mask_batch_stride", p.mask_batch_stride}, {"mask_seq_stride", p.mask_seq_stride},
                                 {"block_table_stride", p.block_table_stride}});
      !st.ok())
    return st;
  if (p.heads_q < 1 || p.heads_k < 1 || p.heads_q % p.heads_k != 0)
    return Status::Invalid(cat("heads: got heads_q=", p.heads_q, " and heads_k=", p.heads_k,
                               ", expected heads_k >= 1 dividing heads_q (grouped-query attention)"));
  if (p.device == Device::kCpu) {
    if (p.head_dim < 1 || p.head_dim > 256)
      return Status::Unsupported(cat("head_dim: got ", p.head_dim, ", the CPU backend supports 1..256"));
    if (p.head_dim_v < 1 || p.head_dim_v > 256)
      return Status::Unsupported(cat("head_dim_v: got ", p.head_dim_v, ", the CPU backend supports 1..256"));
  }
  if (!(p.scale == p.scale) || p.scale == INFINITY || p.scale == -INFINITY)
    return Status::Invalid(cat("scale: got ", p.scale, ", expected a finite number"));
  if (p.window_left < -1 || p.window_right < -1)
    return Status::Invalid(cat("window: got (", p.window_left, ", ", p.window_right,
                               "), expected each bound >= 0, or -1 for unbounded"));
  if (p.causal && p.window_right > 0)
    return Status::Invalid(cat("causal=True with window right bound ", p.window_right,
                               " > 0: causal means right = 0; pass right = 0 or -1"));
  if (p.dilation)
    for (int64_t h = 0; h < p.heads_q; ++h)
      if (p.dilation[h] < 1)
        return Status::Invalid(cat("dilation: got ", p.dilation[h], " for query head ", h,
                                   ", expected an integer >= 1"));
  if (p.global_tokens && p.seqlen_q != p.seqlen_k)
    return Status::Invalid(cat("global_tokens: given with seqlen_q=", p.seqlen_q, " != seqlen_k=", p.seqlen_k,
                               "; global tokens are defined for self-attention only (seqlen_q == seqlen_k)"));
  if (!(p.softcap >= 0.0f) || p.softcap == INFINITY)
    return Status::Invalid(cat("softcap: got ", p.softcap, ", expected a finite number >= 0 (0 = off)"));
  const bool varlen = p.cu_seqlens_q || p.cu_seqlens_k, kvcache = p.cache_seqlens != nullptr;
  if (varlen && !(p.cu_seqlens_q && p.cu_seqlens_k))
    return Status::Invalid("cu_seqlens_q, cu_seqlens_k: give both (variable-length batch) or neither");
  if (varlen && kvcache)
    return Status::Invalid("cu_seqlens, cache_seqlens: a variable-length batch and a KV cache cannot be combined");
  if ((varlen || kvcache) && (p.dilation || p.global_tokens || p.key_padding_mask))
    return Status::Invalid(std::string(varlen ? "cu_seqlens" : "cache_seqlens") +
                           ": dilation, global tokens and key_padding_mask apply to the dense layout only");
  if (p.num_splits < 0 || p.num_splits > 64)
    return Status::Invalid(cat("num_splits: got ", p.num_splits, ", expected 0 (chosen by the library) to 64"));
  if (!kvcache && (p.block_table || p.k_new || p.v_new || p.seqlen_new || p.num_splits > 1))
    return Status::Invalid("block_table, k_new, v_new, num_splits: only with a KV cache (cache_seqlens)");
  if (kvcache) {
    if (p.seqlen_new < 0) return Status::Invalid(cat("seqlen_new: got ", p.seqlen_new, ", expected >= 0"));
    if ((p.k_new == nullptr) != (p.v_new == nullptr) || (p.seqlen_new > 0 && p.batch > 0 && !p.k_new))
      return Status::Invalid("k_new, v_new: give both (with seqlen_new rows) or neither");
    if (p.block_table) {
      if (p.page_size < 1 || p.max_blocks < 1 || p.num_blocks < 1 || p.block_table_stride < p.max_blocks)
        return Status::Invalid(cat("block_table: page_size ", p.page_size, ", max_blocks ", p.max_blocks,
                                   ", num_blocks ", p.num_blocks, ", row stride ", p.block_table_stride,
                                   "; expected each >= 1 and the stride >= max_blocks"));
      if (p.seqlen_k != p.max_blocks * p.page_size)
        return Status::Invalid(cat("seqlen_k: got ", p.seqlen_k, "; a paged cache's capacity is max_blocks * ",
                                   "page_size = ", p.max_blocks * p.page_size));
    }
  }
  // Values inside index tensors: checked when they are host memory (on CUDA the kernels bound every access instead).
  if (p.device == Device::kCpu && varlen) {
    for (const auto& [name, cu, total, hint] : {std::tuple{"cu_seqlens_q", p.cu_seqlens_q, p.total_q, p.seqlen_q},
                                                std::tuple{"cu_seqlens_k", p.cu_seqlens_k, p.total_k, p.seqlen_k}}) {
      if (cu[0] != 0) return Status::Invalid(cat(name, ": starts at ", cu[0], ", expected 0"));
      for (int64_t b = 0; b < p.batch; ++b) {
        const int64_t n = int64_t(cu[b + 1]) - cu[b];
        if (n < 0)
          return Status::Invalid(cat(name, ": decreases at index ", b + 1, " (", cu[b], " then ", cu[b + 1],
                                     "); expected non-decreasing offsets"));
        if (n > hint)
          return Status::Invalid(cat(name, ": sequence ", b, " has ", n, " rows, more than the max_seqlen hint ",
                                     hint, "; pass a hint >= the longest sequence (or None to compute it)"));
      }
      if (cu[p.batch] != total)
        return Status::Invalid(cat(name, ": ends at ", cu[p.batch], ", expected the total row count ", total));
    }
  }
  if (p.device == Device::kCpu && kvcache) {
    for (int64_t b = 0; b < p.batch; ++b) {
      const int64_t n = p.cache_seqlens[b], end = n + p.seqlen_new;
      if (n < 0) return Status::Invalid(cat("cache_seqlens: got ", n, " for sequence ", b, ", expected >= 0"));
      if (end > p.seqlen_k)
        return Status::Invalid(cat("cache_seqlens: sequence ", b, " holds ", n, " tokens; with ", p.seqlen_new,
                                   " new ones it would need ", end, " rows, more than the cache's capacity ",
                                   p.seqlen_k, " (nothing was written)"));
      for (int64_t blk = 0; p.block_table && blk * p.page_size < end; ++blk) {
        const int64_t id = p.block_table[b * p.block_table_stride + blk];
        if (id < 0 || id >= p.num_blocks)
          return Status::Invalid(cat("block_table: entry [", b, ", ", blk, "] is ", id, ", expected a block index in 0..",
                                     p.num_blocks - 1, " (sequence ", b, " uses its first ",
                                     (end + p.page_size - 1) / p.page_size, " entries)"));
      }
    }
  }
  const bool empty = p.batch == 0 || p.seqlen_q == 0 || p.heads_q == 0;
  if (empty) return Status::Ok();
  if (!p.out) return Status::Invalid("out: got a null pointer, expected the output buffer");
  if (!p.q) return Status::Invalid("q: got a null pointer, expected the query buffer");
  if (p.seqlen_k > 0 && (!p.k || !p.v))
    return Status::Invalid("k, v: got a null pointer, expected the key and value buffers (seqlen_k > 0)");
  return Status::Ok();
}

Status check_lsh_params(const LshAttentionParams& p) {
  if (p.dtype != DType::kFloat32 && p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return Status::Invalid(cat("dtype: got ", int(p.dtype), ", expected float32, float16 or bfloat16"));
  if (p.device != Device::kCpu && p.device != Device::kCuda && p.device != Device::kCudaEmulator)
    return Status::Invalid(cat("device: got ", int(p.device), ", expected cpu, cuda or cuda_emulator"));
  const struct { const char* name; int64_t value; } sizes[] = {{"batch", p.batch},       {"seqlen", p.seqlen},
                                                               {"heads", p.heads},       {"head_dim", p.head_dim},
                                                               {"head_dim_v", p.head_dim_v}};
  for (const auto& s : sizes)
    if (s.value < 0) return Status::Invalid(cat(s.name, ": got ", s.value, ", expected a size >= 0"));
  for (const auto& [name, strides] : {std::pair<const char*, const BshdStrides&>{"qk_stride", p.qk_stride},
                                      {"v_stride", p.v_stride}, {"out_stride", p.out_stride}})
    if (Status st = check_bshd_strides(name, strides); !st.ok()) return st;
  if (Status st = check_strides({{"lse_batch_stride", p.lse_batch_stride}, {"lse_head_stride", p.lse_head_stride},
                                 {"mask_batch_stride", p.mask_batch_stride}, {"mask_seq_stride", p.mask_seq_stride}});
      !st.ok())
    return st;
  if (p.device == Device::kCpu) {
    if (p.head_dim < 1 || p.head_dim > 256)
      return Status::Unsupported(cat("head_dim: got ", p.head_dim, ", the CPU backend supports 1..256"));
    if (p.head_dim_v < 1 || p.head_dim_v > 256)
      return Status::Unsupported(cat("head_dim_v: got ", p.head_dim_v, ", the CPU backend supports 1..256"));
  }
  if (p.n_hashes < 1 || p.n_hashes > 64)
    return Status::Invalid(cat("n_hashes: got ", p.n_hashes, ", expected 1..64"));
  if (p.n_buckets < 2 || p.n_buckets % 2 != 0 || p.n_buckets > (int64_t(1) << 24))
    return Status::Invalid(cat("n_buckets: got ", p.n_buckets, ", expected an even number from 2 to 2^24"));
  if (p.n_bucket_factors < 0 || p.n_bucket_factors > 16 || (p.n_bucket_factors > 0 && !p.bucket_factors))
    return Status::Invalid(cat("bucket_factors: got ", p.n_bucket_factors, " factors", p.bucket_factors ? "" : " (null)",
                               "; expected 0 (not factorized) to 16 factors"));
  if (p.bucket_factors && p.n_bucket_factors > 0) {
    int64_t product = 1;
    for (int64_t i = 0; i < p.n_bucket_factors; ++i) {
      const int64_t f = p.bucket_factors[i];
      if (f < 2 || f % 2 != 0 || f > (int64_t(1) << 24))
        return Status::Invalid(cat("bucket_factors[", i, "]: got ", f, ", expected an even number from 2 to 2^24"));
      product *= f;
      if (product > (int64_t(1) << 24))
        return Status::Invalid(cat("bucket_factors: their product exceeds 2^24 buckets at factor ", i));
    }
    if (product != p.n_buckets)
      return Status::Invalid(cat("n_buckets: got ", p.n_buckets, " with bucket_factors whose product is ", product,
                                 "; expected n_buckets = the product"));
  }
  if (p.chunk_length < 1) return Status::Invalid(cat("chunk_length: got ", p.chunk_length, ", expected >= 1"));
  if (p.chunks_before < 0 || p.chunks_after < 0 || p.chunks_before + p.chunks_after > 32)
    return Status::Invalid(cat("chunks_before, chunks_after: got ", p.chunks_before, ", ", p.chunks_after,
                               "; expected each >= 0 and together <= 32"));
  if (p.seqlen > p.chunk_length && p.seqlen % p.chunk_length != 0)
    return Status::Invalid(cat("seqlen: got ", p.seqlen, ", not a multiple of chunk_length ", p.chunk_length,
                               "; pad the sequence to a multiple and mark the padding in key_padding_mask"));
  if (p.seqlen > (int64_t(1) << 24))
    return Status::Unsupported(cat("seqlen: got ", p.seqlen, ", the CPU backend supports up to 2^24 tokens"));
  if (p.n_hashes * p.seqlen > (int64_t(1) << 31) - 1)
    return Status::Unsupported(cat("n_hashes * seqlen: got ", p.n_hashes * p.seqlen, ", expected < 2^31"));
  const bool empty = p.batch == 0 || p.seqlen == 0 || p.heads == 0;
  if (empty) return Status::Ok();
  if (!p.qk || !p.v) return Status::Invalid("qk, v: got a null pointer, expected the input buffers");
  if (!p.out) return Status::Invalid("out: got a null pointer, expected the output buffer");
  if ((p.seqlen > p.chunk_length || p.buckets_out) && !p.rotations && !p.buckets_in)
    return Status::Invalid("rotations, buckets_in: both null; hashing needs rotations, or pass the buckets");
  return Status::Ok();
}

}  // namespace longattn
