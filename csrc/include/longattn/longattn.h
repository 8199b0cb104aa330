// longattn — the public, torch-free C++ API.
//
// An inference stack links `longattn_core` and includes this header, nothing else: no torch, no Python.
// One params struct carries pointers, sizes, strides (in elements), dtype, scale, mask-policy options and the
// stream from the caller to the kernels; every entry point returns a Status instead of throwing.
#pragma once

#include <cstdint>
#include <string>

namespace longattn {

enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
// kCudaEmulator: the CUDA backend's host code and kernels, run on the CPU by longattn's CUDA emulator, with host
// pointers for every buffer (longattn/cuda_emulator.h). For testing CUDA code paths without a GPU; slow.
enum class Device : int32_t { kCpu = 0, kCuda = 1, kCudaEmulator = 2 };

enum class StatusCode : int32_t {
  kOk = 0,
  kInvalidArgument = 1,  // a size, stride, pointer or option is wrong (Python: ValueError)
  kUnsupported = 2,      // a valid request this build or device cannot serve (Python: ValueError)
  kInternal = 3,         // a bug in longattn (Python: RuntimeError)
};

struct Status {
  StatusCode code = StatusCode::kOk;
  std::string message;

  bool ok() const { return code == StatusCode::kOk; }
  static Status Ok() { return {}; }
  static Status Invalid(std::string msg) { return {StatusCode::kInvalidArgument, std::move(msg)}; }
  static Status Unsupported(std::string msg) { return {StatusCode::kUnsupported, std::move(msg)}; }
};

// Strides of a (batch, seq, head, dim) tensor, in elements. The dim stride is always 1.
struct BshdStrides {
  int64_t batch = 0;
  int64_t seq = 0;
  int64_t head = 0;
};

// Everything one attention forward call needs (docs/semantics.md, common conventions).
//   q   (batch, seqlen_q, heads_q, head_dim)      k (batch, seqlen_k, heads_k, head_dim)
//   v   (batch, seqlen_k, heads_k, head_dim_v)    out (batch, seqlen_q, heads_q, head_dim_v)
//   lse (batch, heads_q, seqlen_q) float32, optional (nullptr = not written)
// Key j is visible to query i (sitting at key position p = i + seqlen_k - seqlen_q) iff
//   p - window_left*dil <= j <= p + window_right*dil  and  (j - p) % dil == 0   (a side set to -1 is unbounded)
// where dil is the query head's dilation (1 unless `dilation` is given), or iff j or i is a global token
// (Longformer, self-attention only). `causal` is the same as window_right = 0 (bottom-right aligned).
struct AttentionParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;

  DType dtype = DType::kFloat32;  // q, k, v and out share it
  Device device = Device::kCpu;

  int64_t batch = 0;
  int64_t seqlen_q = 0;
  int64_t seqlen_k = 0;
  int64_t heads_q = 0;
  int64_t heads_k = 0;  // heads_q % heads_k == 0; query head h reads kv head h / (heads_q / heads_k)
  int64_t head_dim = 0;
  int64_t head_dim_v = 0;

  BshdStrides q_stride, k_stride, v_stride, out_stride;
  int64_t lse_batch_stride = 0;  // lse strides in elements; the seq stride is 1
  int64_t lse_head_stride = 0;

  float scale = 1.0f;  // multiplies q·k before the softmax
  bool causal = false;
  int64_t window_left = -1;   // sliding-window bounds (docs/semantics.md), inclusive; -1 = unbounded
  int64_t window_right = -1;
  // Dilation per query head: heads_q values, each >= 1, owned by the caller; nullptr = 1 for all heads.
  const int64_t* dilation = nullptr;
  // Longformer global tokens, only with seqlen_q == seqlen_k: bytes (batch, seqlen_k), nonzero = global,
  // strides in elements; nullptr = none. Every query also sees each global key (once, even inside its window);
  // a global query sees every key.
  const uint8_t* global_tokens = nullptr;
  int64_t global_batch_stride = 0;
  int64_t global_seq_stride = 0;

  // ---- options for serving (docs/semantics.md: options shared by the dense and windowed operations) ------------
  float softcap = 0.0f;  // > 0: each scaled score s becomes softcap * tanh(s / softcap), before masking
  // Attention sinks: heads_q float32 logits, one per query head, that join every row's softmax denominator and carry
  // no value; null = none. lse includes the sink; a row with no visible key gets out = 0 and lse = its sink.
  const float* sinks = nullptr;
  // Key padding (dense layout only): bytes (batch, seqlen_k), nonzero = a real key, zero = padding, hidden from every
  // query (ANDed with the other rules); strides in elements; null = every key is real.
  const uint8_t* key_padding_mask = nullptr;
  int64_t mask_batch_stride = 0;
  int64_t mask_seq_stride = 0;

  // ---- variable-length batches (docs/semantics.md) ------------------------------------------------------------
  // With cu_seqlens_q (and cu_seqlens_k) set, each (batch + 1) int32 offsets: q and out hold the sequences packed,
  // (total_q, heads_q, ·) with sequence b in rows cu_seqlens_q[b] .. cu_seqlens_q[b + 1] - 1, k and v likewise
  // (total_k rows); the batch strides are unused and lse is (heads_q, total_q) (lse_batch_stride unused). seqlen_q and
  // seqlen_k are then the max_seqlen hints: on the CPU they must be >= every length (checked); on CUDA a small hint
  // costs speed only. Sequence b attends only its own keys; causal and the window are aligned bottom-right within it.
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;
  int64_t total_q = 0;
  int64_t total_k = 0;

  // ---- decoding against a KV cache (docs/semantics.md) --------------------------------------------------------
  // With cache_seqlens set ((batch,) int32: the tokens each sequence's cache already holds), k and v are the cache:
  //   contiguous: (batch, capacity, heads_k, ·), seqlen_k = capacity;
  //   paged (block_table set): (num_blocks, page_size, heads_k, ·) — k_stride.batch is the block stride — and
  //     block_table (batch, block_table_stride) int32: token t of sequence b is row t % page_size of block
  //     block_table[b * block_table_stride + t / page_size]; seqlen_k = max_blocks * page_size is the capacity.
  // k_new / v_new (batch, seqlen_new, heads_k, ·), optional, are first written into the cache at positions
  // cache_seqlens[b] .. cache_seqlens[b] + seqlen_new - 1 (the caller's cache changes); sequence b then attends its
  // keys 0 .. L_b - 1, L_b = cache_seqlens[b] + seqlen_new, causal and the window aligned bottom-right to L_b.
  const int32_t* cache_seqlens = nullptr;
  const int32_t* block_table = nullptr;
  int64_t block_table_stride = 0;
  int64_t max_blocks = 0;
  int64_t num_blocks = 0;
  int64_t page_size = 0;
  const void* k_new = nullptr;
  const void* v_new = nullptr;
  BshdStrides k_new_stride, v_new_stride;
  int64_t seqlen_new = 0;
  // Key splits per sequence (flash-decoding: partial results merged by their lse): 0 = chosen by the library from the
  // lengths and the threads / SMs, 1 = none, n = n pieces. Results are bitwise identical for a given value whatever
  // the thread count; different values agree to float32 rounding.
  int num_splits = 0;

  void* stream = nullptr;  // cudaStream_t for Device::kCuda; ignored on the CPU
  int device_index = -1;   // CUDA device of the tensors (made current for the call); -1 = the current device
  // Device scratch for Device::kCuda, at least attention_workspace_bytes(params) bytes, owned by the caller (no
  // allocation happens inside a call, so CUDA-graph capture works); unused on the CPU.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

// Runs the forward pass on params.device. Validates params first; never throws.
Status attention_forward(const AttentionParams& params);

// Scratch bytes attention_forward needs in params.workspace (CUDA with global tokens; otherwise 0).
int64_t attention_workspace_bytes(const AttentionParams& params);

// Whether this build has CUDA kernels, and for which architectures ("80-real;90a-real;90-virtual" form).
bool cuda_kernels_built();
const char* cuda_architectures();

// Only the argument checks of attention_forward (shapes, strides, pointers, options).
Status check_params(const AttentionParams& params);

// Reformer's shared-QK bucketed-LSH attention (docs/semantics.md), one call per forward pass.
//   qk  (batch, seqlen, heads, head_dim)      v (batch, seqlen, heads, head_dim_v)     out like v
//   lse (batch, heads, seqlen) float32, optional: log-sum-exp over the rounds
// Buckets come from `buckets_in` when given, else from hashing with `rotations`. Hashing:
//   bucket_r(t) = argmax(concat(qk_t R_r, -qk_t R_r)), first maximal index; a padded token gets n_buckets.
// Factorized (bucket_factors f_0 .. f_{k-1}, n_buckets = their product): factor i takes the f_i / 2 rotation columns
// after those of the factors before it, b_i = argmax(concat(qk_t R_r,i, -qk_t R_r,i)), and
//   bucket_r(t) = sum_i b_i * (f_0 * ... * f_{i-1})            (Hugging Face Reformer's num_buckets=[f_0, f_1, ...]).
// Then the n_hashes·seqlen (round, position) items are sorted stably by (round, bucket, position), cut into chunks of
// chunk_length, and chunk c attends chunks c - chunks_before .. c + chunks_after (cyclic) with keys
// qk·rsqrt(mean(qk²) + 1e-6)/sqrt(head_dim), queries qk, scores replaced by -1e9 (padding key, or a later key when
// causal) and then by -1e5 (the query's own position); rounds are combined by their log-sum-exps.
// With seqlen <= chunk_length there is no hashing: one round of ordinary attention with those masks.
struct LshAttentionParams {
  const void* qk = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;  // optional

  DType dtype = DType::kFloat32;
  Device device = Device::kCpu;

  int64_t batch = 0;
  int64_t seqlen = 0;  // a multiple of chunk_length, or <= chunk_length
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t head_dim_v = 0;
  BshdStrides qk_stride, v_stride, out_stride;
  int64_t lse_batch_stride = 0;
  int64_t lse_head_stride = 0;

  int64_t n_hashes = 1;
  int64_t n_buckets = 2;  // even; with bucket_factors, their product
  // Optional: n_bucket_factors even factors >= 2 of n_buckets (factorized hashing, above); null = one factor.
  const int64_t* bucket_factors = nullptr;
  int64_t n_bucket_factors = 0;
  int64_t chunk_length = 64;
  int64_t chunks_before = 1;
  int64_t chunks_after = 0;
  bool causal = false;

  // Contiguous float32 (heads, head_dim, n_hashes, lsh_rotation_columns(params)): n_buckets / 2 columns, or the sum
  // of bucket_factors[i] / 2 when factorized; used when buckets_in is null.
  const float* rotations = nullptr;
  // Contiguous int64 (batch, heads, n_hashes, seqlen), values in [0, n_buckets]; null = hash with rotations.
  const int64_t* buckets_in = nullptr;
  // Contiguous int64 (batch, heads, n_hashes, seqlen): the buckets used (hashed or copied); optional.
  int64_t* buckets_out = nullptr;
  // Bytes (batch, seqlen), nonzero = a real token, zero = padding; strides in elements; null = no padding.
  const uint8_t* key_padding_mask = nullptr;
  int64_t mask_batch_stride = 0;
  int64_t mask_seq_stride = 0;

  void* stream = nullptr;  // CUDA: the stream to launch on (a cudaStream_t); null = the default stream
  int device_index = -1;   // CUDA device of the tensors (made current for the call); -1 = the current device
  // Device scratch for Device::kCuda, at least lsh_attention_workspace_bytes(params) bytes, owned by the caller (no
  // allocation inside the call, so it can be captured in a CUDA graph): buckets, sort, key norms, per-round partials.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

// Columns of the rotations per (head, round): n_buckets / 2, or the sum of bucket_factors[i] / 2 when factorized.
inline int64_t lsh_rotation_columns(const LshAttentionParams& p) {
  if (!p.bucket_factors || p.n_bucket_factors < 1) return p.n_buckets / 2;
  int64_t columns = 0;
  for (int64_t i = 0; i < p.n_bucket_factors; ++i) columns += p.bucket_factors[i] / 2;
  return columns;
}

Status lsh_attention_forward(const LshAttentionParams& params);
Status check_lsh_params(const LshAttentionParams& params);
// Scratch bytes lsh_attention_forward needs in params.workspace (CUDA; 0 on the CPU, which allocates its own).
int64_t lsh_attention_workspace_bytes(const LshAttentionParams& params);

// ---- CPU backend controls -------------------------------------------------------------------------------------
// kAvx512Bf16: the AVX-512 engine, with bfloat16 inputs on VDPBF16PS tiles (P rounded to bfloat16 before P·V).
// kAmx: bfloat16 on AMX-BF16 tiles and float16 on AMX-FP16 tiles where the CPU has them (P rounded to the input
//       dtype), the rest as kAvx512Bf16; needs the OS to grant the AMX state (Linux: arch_prctl, asked once).
// kAmxModel: a test build, never chosen by default: the AVX2 engine with kAmx's tile path on modelled tiles.
enum class CpuIsa : int32_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmx = 4, kAmxModel = 5 };

const char* cpu_isa_name(CpuIsa isa);
bool cpu_isa_supported(CpuIsa isa);  // compiled in and supported by this CPU and OS
bool cpu_amx_fp16_supported();       // kAmx runs float16 on tiles too (AMX-FP16); else float16 runs as on kAvx512Bf16
CpuIsa best_cpu_isa();
// The ISA the CPU kernels use. Default: best_cpu_isa(), or LONGATTN_CPU_ISA=scalar|avx2|avx512|avx512_bf16|amx|
// amx_model at load time.
CpuIsa active_cpu_isa();
Status set_cpu_isa(CpuIsa isa);

// Worker threads of longattn's own pool (not OpenMP). Default: LONGATTN_NUM_THREADS, else the usable cores.
// Results are bitwise identical for any thread count.
int num_threads();
Status set_num_threads(int n);

// What was wrong with LONGATTN_CPU_ISA / LONGATTN_NUM_THREADS, one line each ("" if nothing): a value that is set but
// unusable (an unknown ISA name, an ISA this CPU cannot run, a thread count outside 1..1024) is ignored and the
// default used; these lines say so, and what is used instead. The Python package warns with them at import.
const char* environment_warnings();

const char* version();

}  // namespace longattn
