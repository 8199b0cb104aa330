// longattn._C: turns Python ints and tuples into AttentionParams, releases the GIL, maps Status to exceptions.
// It takes raw data pointers and strides (no libtorch), so one wheel serves every torch version.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <string>
#include <vector>

#include "longattn/cuda_emulator.h"
#include "longattn/longattn.h"

namespace py = pybind11;
using namespace longattn;

namespace {

void raise_if_error(const Status& st) {
  switch (st.code) {
    case StatusCode::kOk: return;
    case StatusCode::kInvalidArgument:
    case StatusCode::kUnsupported: throw py::value_error(st.message);
    case StatusCode::kInternal: throw std::runtime_error(st.message);
  }
}

// Runs a kernel call with the GIL released (other Python threads keep running), then maps its Status.
template <typename Call>
void run_without_gil(Call call) {
  Status st;
  {
    py::gil_scoped_release release;
    st = call();
  }
  raise_if_error(st);
}

DType parse_dtype(const std::string& s) {
  if (s == "float32") return DType::kFloat32;
  if (s == "float16") return DType::kFloat16;
  if (s == "bfloat16") return DType::kBFloat16;
  throw py::value_error("dtype: got '" + s + "', expected float32, float16 or bfloat16");
}

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::kCpu;
  if (s == "cuda") return Device::kCuda;
  if (s == "cuda_emulator") return Device::kCudaEmulator;
  throw py::value_error("device: got '" + s + "', expected cpu, cuda or cuda_emulator");
}

CpuIsa parse_isa(const std::string& s) {
  for (CpuIsa c : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16, CpuIsa::kAmx,
                   CpuIsa::kAmxModel})
    if (s == cpu_isa_name(c)) return c;
  throw py::value_error("isa: got '" + s + "', expected scalar, avx2, avx512, avx512_bf16, amx or amx_model");
}

BshdStrides strides3(const std::array<int64_t, 3>& s) { return {s[0], s[1], s[2]}; }

// sizes = (batch, seqlen_q, seqlen_k, heads_q, heads_k, head_dim, head_dim_v); strides in elements (b, s, h).
AttentionParams params_from(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse,
                          const std::string& dtype, const std::string& device, const std::array<int64_t, 7>& sizes,
                          const std::array<int64_t, 3>& q_strides, const std::array<int64_t, 3>& k_strides,
                          const std::array<int64_t, 3>& v_strides, const std::array<int64_t, 3>& out_strides,
                          const std::array<int64_t, 2>& lse_strides, double scale, bool causal, int64_t window_left,
                          int64_t window_right, const std::vector<int64_t>& dilation, uintptr_t global_tokens,
                          const std::array<int64_t, 2>& global_strides, uintptr_t stream, uintptr_t workspace,
                          int64_t workspace_bytes, int device_index, double softcap, uintptr_t sinks,
                          uintptr_t key_padding_mask, const std::array<int64_t, 2>& mask_strides,
                          const std::array<int64_t, 4>& varlen, const std::array<int64_t, 9>& kvcache,
                          const std::array<int64_t, 3>& k_new_strides, const std::array<int64_t, 3>& v_new_strides) {
  AttentionParams p;
  p.q = reinterpret_cast<const void*>(q);
  p.k = reinterpret_cast<const void*>(k);
  p.v = reinterpret_cast<const void*>(v);
  p.out = reinterpret_cast<void*>(out);
  p.lse = reinterpret_cast<float*>(lse);
  p.dtype = parse_dtype(dtype);
  p.device = parse_device(device);
  p.batch = sizes[0];
  p.seqlen_q = sizes[1];
  p.seqlen_k = sizes[2];
  p.heads_q = sizes[3];
  p.heads_k = sizes[4];
  p.head_dim = sizes[5];
  p.head_dim_v = sizes[6];
  p.q_stride = strides3(q_strides);
  p.k_stride = strides3(k_strides);
  p.v_stride = strides3(v_strides);
  p.out_stride = strides3(out_strides);
  p.lse_batch_stride = lse_strides[0];
  p.lse_head_stride = lse_strides[1];
  p.scale = float(scale);
  p.causal = causal;
  p.window_left = window_left;
  p.window_right = window_right;
  // dilation: empty = 1 for every head, else one value per query head.
  if (!dilation.empty() && int64_t(dilation.size()) != p.heads_q)
    throw py::value_error("dilation: got " + std::to_string(dilation.size()) + " values, expected one per query head (" +
                          std::to_string(p.heads_q) + ")");
  p.dilation = dilation.empty() ? nullptr : dilation.data();
  p.global_tokens = reinterpret_cast<const uint8_t*>(global_tokens);
  p.global_batch_stride = global_strides[0];
  p.global_seq_stride = global_strides[1];
  p.workspace = reinterpret_cast<void*>(workspace);
  p.workspace_bytes = workspace_bytes;
  p.device_index = device_index;
  p.stream = reinterpret_cast<void*>(stream);
  p.softcap = float(softcap);
  p.sinks = reinterpret_cast<const float*>(sinks);
  p.key_padding_mask = reinterpret_cast<const uint8_t*>(key_padding_mask);
  p.mask_batch_stride = mask_strides[0];
  p.mask_seq_stride = mask_strides[1];
  // varlen = (cu_seqlens_q, cu_seqlens_k, total_q, total_k) pointers / counts, 0 when not a variable-length batch
  p.cu_seqlens_q = reinterpret_cast<const int32_t*>(varlen[0]);
  p.cu_seqlens_k = reinterpret_cast<const int32_t*>(varlen[1]);
  p.total_q = varlen[2];
  p.total_k = varlen[3];
  // kvcache = (cache_seqlens, block_table, block_table_stride, num_blocks, page_size, k_new, v_new, seqlen_new,
  //            num_splits), 0 when not a KV-cache call
  p.cache_seqlens = reinterpret_cast<const int32_t*>(kvcache[0]);
  p.block_table = reinterpret_cast<const int32_t*>(kvcache[1]);
  p.block_table_stride = kvcache[2];
  p.num_blocks = kvcache[3];
  p.page_size = kvcache[4];
  p.max_blocks = p.block_table && p.page_size > 0 ? p.seqlen_k / p.page_size : 0;
  p.k_new = reinterpret_cast<const void*>(kvcache[5]);
  p.v_new = reinterpret_cast<const void*>(kvcache[6]);
  p.seqlen_new = kvcache[7];
  p.num_splits = int(kvcache[8]);
  p.k_new_stride = strides3(k_new_strides);
  p.v_new_stride = strides3(v_new_strides);
  return p;
}

#define LONGATTN_ATTENTION_ARGS                                                                                     \
  uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse, const std::string &dtype,                    \
      const std::string &device, const std::array<int64_t, 7> &sizes, const std::array<int64_t, 3> &q_strides,     \
      const std::array<int64_t, 3> &k_strides, const std::array<int64_t, 3> &v_strides,                            \
      const std::array<int64_t, 3> &out_strides, const std::array<int64_t, 2> &lse_strides, double scale,         \
      bool causal, int64_t window_left, int64_t window_right, const std::vector<int64_t> &dilation,               \
      uintptr_t global_tokens, const std::array<int64_t, 2> &global_strides, uintptr_t stream, uintptr_t workspace, \
      int64_t workspace_bytes, int device_index, double softcap, uintptr_t sinks, uintptr_t key_padding_mask,      \
      const std::array<int64_t, 2> &mask_strides, const std::array<int64_t, 4> &varlen,                            \
      const std::array<int64_t, 9> &kvcache, const std::array<int64_t, 3> &k_new_strides,                          \
      const std::array<int64_t, 3> &v_new_strides
#define LONGATTN_ATTENTION_PASS                                                                                    \
  q, k, v, out, lse, dtype, device, sizes, q_strides, k_strides, v_strides, out_strides, lse_strides, scale, causal, \
      window_left, window_right, dilation, global_tokens, global_strides, stream, workspace, workspace_bytes,      \
      device_index, softcap, sinks, key_padding_mask, mask_strides, varlen, kvcache, k_new_strides, v_new_strides

void attention_forward_py(LONGATTN_ATTENTION_ARGS) {
  const AttentionParams p = params_from(LONGATTN_ATTENTION_PASS);
  run_without_gil([&] { return attention_forward(p); });
}

// The device scratch bytes the same call needs in `workspace` (CUDA: global-token index, key-split partials).
int64_t attention_workspace_py(LONGATTN_ATTENTION_ARGS) {
  return attention_workspace_bytes(params_from(LONGATTN_ATTENTION_PASS));
}

// sizes = (batch, seqlen, heads, head_dim, head_dim_v); options = (n_hashes, n_buckets, chunk_length, chunks_before,
// chunks_after); pointers of optional buffers are 0 when absent; bucket_factors empty = not factorized.
#define LONGATTN_LSH_ARGS                                                                                            \
  uintptr_t qk, uintptr_t v, uintptr_t out, uintptr_t lse, const std::string &dtype, const std::string &device,      \
      const std::array<int64_t, 5> &sizes, const std::array<int64_t, 3> &qk_strides,                                \
      const std::array<int64_t, 3> &v_strides, const std::array<int64_t, 3> &out_strides,                           \
      const std::array<int64_t, 2> &lse_strides, const std::array<int64_t, 5> &options, bool causal,                \
      uintptr_t rotations, uintptr_t buckets_in, uintptr_t buckets_out, uintptr_t key_padding_mask,                 \
      const std::array<int64_t, 2> &mask_strides, uintptr_t stream, const std::vector<int64_t> &bucket_factors,     \
      uintptr_t workspace, int64_t workspace_bytes, int device_index
#define LONGATTN_LSH_PASS                                                                                            \
  qk, v, out, lse, dtype, device, sizes, qk_strides, v_strides, out_strides, lse_strides, options, causal, rotations, \
      buckets_in, buckets_out, key_padding_mask, mask_strides, stream, bucket_factors, workspace, workspace_bytes,     \
      device_index

// The parameters point into bucket_factors, which must outlive them.
LshAttentionParams lsh_params_from(LONGATTN_LSH_ARGS) {
  LshAttentionParams p;
  p.qk = reinterpret_cast<const void*>(qk);
  p.v = reinterpret_cast<const void*>(v);
  p.out = reinterpret_cast<void*>(out);
  p.lse = reinterpret_cast<float*>(lse);
  p.dtype = parse_dtype(dtype);
  p.device = parse_device(device);
  p.batch = sizes[0];
  p.seqlen = sizes[1];
  p.heads = sizes[2];
  p.head_dim = sizes[3];
  p.head_dim_v = sizes[4];
  p.qk_stride = strides3(qk_strides);
  p.v_stride = strides3(v_strides);
  p.out_stride = strides3(out_strides);
  p.lse_batch_stride = lse_strides[0];
  p.lse_head_stride = lse_strides[1];
  p.n_hashes = options[0];
  p.n_buckets = options[1];
  p.bucket_factors = bucket_factors.empty() ? nullptr : bucket_factors.data();
  p.n_bucket_factors = int64_t(bucket_factors.size());
  p.chunk_length = options[2];
  p.chunks_before = options[3];
  p.chunks_after = options[4];
  p.causal = causal;
  p.rotations = reinterpret_cast<const float*>(rotations);
  p.buckets_in = reinterpret_cast<const int64_t*>(buckets_in);
  p.buckets_out = reinterpret_cast<int64_t*>(buckets_out);
  p.key_padding_mask = reinterpret_cast<const uint8_t*>(key_padding_mask);
  p.mask_batch_stride = mask_strides[0];
  p.mask_seq_stride = mask_strides[1];
  p.stream = reinterpret_cast<void*>(stream);
  p.workspace = reinterpret_cast<void*>(workspace);
  p.workspace_bytes = workspace_bytes;
  p.device_index = device_index;
  return p;
}

void lsh_attention_forward_py(LONGATTN_LSH_ARGS) {
  const LshAttentionParams p = lsh_params_from(LONGATTN_LSH_PASS);
  run_without_gil([&] { return lsh_attention_forward(p); });
}

// The device scratch bytes the same call needs in `workspace` (CUDA: buckets, sort, key norms, round partials).
int64_t lsh_attention_workspace_py(LONGATTN_LSH_ARGS) {
  return lsh_attention_workspace_bytes(lsh_params_from(LONGATTN_LSH_PASS));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "longattn kernels (torch-free; pointers, sizes and strides in, status out)";
#define LONGATTN_ATTENTION_PYARGS                                                                                   \
  py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("dtype"), py::arg("device"),      \
      py::arg("sizes"), py::arg("q_strides"), py::arg("k_strides"), py::arg("v_strides"), py::arg("out_strides"),    \
      py::arg("lse_strides"), py::arg("scale"), py::arg("causal"), py::arg("window_left"), py::arg("window_right"),   \
      py::arg("dilation"), py::arg("global_tokens"), py::arg("global_strides"), py::arg("stream"),                   \
      py::arg("workspace") = 0, py::arg("workspace_bytes") = 0, py::arg("device_index") = -1,                        \
      py::arg("softcap") = 0.0, py::arg("sinks") = 0, py::arg("key_padding_mask") = 0,                               \
      py::arg("mask_strides") = std::array<int64_t, 2>{0, 0}, py::arg("varlen") = std::array<int64_t, 4>{},        \
      py::arg("kvcache") = std::array<int64_t, 9>{}, py::arg("k_new_strides") = std::array<int64_t, 3>{},         \
      py::arg("v_new_strides") = std::array<int64_t, 3>{}
  m.def("attention_forward", &attention_forward_py, LONGATTN_ATTENTION_PYARGS);
  m.def("attention_workspace_bytes", &attention_workspace_py, LONGATTN_ATTENTION_PYARGS);
#define LONGATTN_LSH_PYARGS                                                                                         \
  py::arg("qk"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("dtype"), py::arg("device"), py::arg("sizes"), \
      py::arg("qk_strides"), py::arg("v_strides"), py::arg("out_strides"), py::arg("lse_strides"), py::arg("options"), \
      py::arg("causal"), py::arg("rotations"), py::arg("buckets_in"), py::arg("buckets_out"),                         \
      py::arg("key_padding_mask"), py::arg("mask_strides"), py::arg("stream"),                                         \
      py::arg("bucket_factors") = std::vector<int64_t>{}, py::arg("workspace") = 0, py::arg("workspace_bytes") = 0,    \
      py::arg("device_index") = -1
  m.def("lsh_attention_forward", &lsh_attention_forward_py, LONGATTN_LSH_PYARGS);
  m.def("lsh_attention_workspace_bytes", &lsh_attention_workspace_py, LONGATTN_LSH_PYARGS);
  m.def("version", &version);
  m.def("num_threads", &num_threads);
  m.def("environment_warnings", [] { return std::string(environment_warnings()); });
  m.def("set_num_threads", [](int n) { raise_if_error(set_num_threads(n)); });
  m.def("cpu_isa", [] { return std::string(cpu_isa_name(active_cpu_isa())); });
  m.def("best_cpu_isa", [] { return std::string(cpu_isa_name(best_cpu_isa())); });
  m.def("set_cpu_isa", [](const std::string& s) { raise_if_error(set_cpu_isa(parse_isa(s))); });
  m.def("cpu_isa_supported", [](const std::string& s) { return cpu_isa_supported(parse_isa(s)); });
  m.def("cpu_amx_fp16_supported", [] { return cpu_amx_fp16_supported(); });
  // ---- the CUDA emulator (longattn.testing.cuda_emulator) ----
  m.attr("emulator_built") = emulator::built();
  m.attr("emulator_plain_access_checks") = emulator::plain_access_checks();
  m.def(
      "emulator_configure",
      [](int compute_capability, bool memcheck, bool shuffle, uint64_t seed, int workers) {
        emulator::Options o;
        o.compute_capability = compute_capability;
        o.memcheck = memcheck;
        o.shuffle = shuffle;
        o.seed = seed;
        o.workers = workers;
        raise_if_error(emulator::configure(o));
      },
      py::arg("compute_capability"), py::arg("memcheck"), py::arg("shuffle"), py::arg("seed"), py::arg("workers"));
  m.def("emulator_options", [] {
    const emulator::Options o = emulator::options();
    py::dict d;
    d["compute_capability"] = o.compute_capability;
    d["memcheck"] = o.memcheck;
    d["shuffle"] = o.shuffle;
    d["seed"] = o.seed;
    d["workers"] = o.workers;
    return d;
  });
  m.def("emulator_stats", [] {
    const emulator::Stats s = emulator::stats();
    py::dict d;
    d["launches"] = s.launches;
    d["blocks"] = s.blocks;
    d["threads"] = s.threads;
    d["barriers"] = s.barriers;
    d["warp_collectives"] = s.warp_collectives;
    d["mma"] = s.mma;
    d["ldmatrix"] = s.ldmatrix;
    d["cp_async"] = s.cp_async;
    d["checked_accesses"] = s.checked_accesses;
    return d;
  });
  m.def("emulator_reset_stats", &emulator::reset_stats);
  m.def(
      "emulator_fragment_layout",
      [](const std::string& name) {
        py::list out;
        for (const auto& e : emulator::fragment_layout(name))
          out.append(py::make_tuple(e.lane, e.value, e.row, e.col, e.matrix));
        return out;
      },
      py::arg("name"));
  m.attr("cuda_toolkit_at_build") = bool(LONGATTN_CUDA_TOOLKIT_FOUND);
  m.attr("cuda_kernels_built") = cuda_kernels_built();
  {
    py::list archs;  // "80-real,90a-real,90-virtual" -> ["80-real", "90a-real", "90-virtual"]
    std::string all = cuda_architectures(), item;
    for (char c : all + ",") {
      if (c == ',') {
        if (!item.empty()) archs.append(item);
        item.clear();
      } else {
        item += c;
      }
    }
    m.attr("cuda_archs") = archs;
  }
}
