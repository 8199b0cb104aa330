// Argument checks shared by every backend. Messages name the field, the value and what is accepted, because the
// Python layer passes them through verbatim for anything it did not already reject.
#include <cmath>
#include <sstream>

#include "longattn/longattn.h"

namespace longattn {
namespace {

template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
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
