// Chooses the CPU kernel variant (scalar / AVX2 / AVX-512) at run time and runs the work items on the pool.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(LONGATTN_HAVE_AMX) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "cpu_backend.h"
#include "kernels.h"
#include "thread_pool.h"

namespace longattn {
namespace cpu {

#if defined(LONGATTN_HAVE_AMX) && defined(__linux__)
namespace {
struct AmxSupport {
  bool tiles = false, fp16 = false;  // usable AMX-TILE + AMX-BF16 (permission granted); AMX-FP16 as well
};
// CPUID leaf 7 (AMX-TILE, AMX-BF16; AMX-FP16 in sub-leaf 1), the tile state enabled in XCR0, and Linux's
// permission for it: the tile data is an extended state a process must request (ARCH_REQ_XCOMP_PERM) before its
// first tile instruction, or that instruction faults. Asked once; refused (old kernel, seccomp) means no AMX.
AmxSupport probe_amx() {
  AmxSupport s;
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return s;
  const bool amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1, osxsave = [] {
    unsigned a1, b1, c1, d1;
    return __get_cpuid(1, &a1, &b1, &c1, &d1) && ((c1 >> 27) & 1);
  }();
  if (!amx_bf16 || !amx_tile || !osxsave) return s;
  unsigned xcr0_lo, xcr0_hi;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & (3u << 17)) != (3u << 17)) return s;  // XTILECFG and XTILEDATA
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return s;
  s.tiles = true;
  s.fp16 = __get_cpuid_count(7, 1, &a, &b, &c, &d) && ((a >> 21) & 1);
  return s;
}
const AmxSupport& amx_support() {
  static const AmxSupport s = probe_amx();
  return s;
}
}  // namespace
bool cpu_has_amx_fp16() { return amx_support().fp16; }
#else
bool cpu_has_amx_fp16() { return false; }
#endif

namespace {

constexpr CpuIsa kAllIsas[] = {CpuIsa::kScalar, CpuIsa::kAvx2,     CpuIsa::kAvx512,
                               CpuIsa::kAvx512Bf16, CpuIsa::kAmx, CpuIsa::kAmxModel};

bool cpu_has(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return true;
    case CpuIsa::kAvx2:
#if defined(LONGATTN_HAVE_AVX2) && (defined(__GNUC__) || defined(__clang__))
      // libgcc's feature bits also require the OS to save the ymm state (XCR0).
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
      return false;
#endif
    case CpuIsa::kAvx512:
#if defined(LONGATTN_HAVE_AVX512) && (defined(__GNUC__) || defined(__clang__))
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
      return false;
#endif
    case CpuIsa::kAvx512Bf16:
#if defined(LONGATTN_HAVE_AVX512_BF16) && (defined(__GNUC__) || defined(__clang__))
      return cpu_has(CpuIsa::kAvx512) && __builtin_cpu_supports("avx512bf16");
#else
      return false;
#endif
    case CpuIsa::kAmx:
#if defined(LONGATTN_HAVE_AMX) && defined(__linux__)
      return cpu_has(CpuIsa::kAvx512Bf16) && amx_support().tiles;
#else
      return false;
#endif
    case CpuIsa::kAmxModel:
#if defined(LONGATTN_HAVE_AMX_MODEL)
      return cpu_has(CpuIsa::kAvx2);
#else
      return false;
#endif
  }
  return false;
}

// LONGATTN_CPU_ISA when it names an ISA this build and CPU can run; else the best one, and `problem` says why.
CpuIsa initial_isa(std::string* problem = nullptr) {
  const CpuIsa best = best_cpu_isa();
  const char* env = std::getenv("LONGATTN_CPU_ISA");
  if (!env || !*env) return best;  // unset or empty
  const std::string using_best = std::string(": ignored, using ") + cpu_isa_name(best) + " (the best this CPU runs)";
  for (CpuIsa c : kAllIsas)
    if (std::strcmp(env, cpu_isa_name(c)) == 0) {
      if (cpu_has(c)) return c;
      if (problem) *problem = "LONGATTN_CPU_ISA='" + std::string(env) + "': this CPU or build cannot run it" + using_best;
      return best;
    }
  if (problem)
    *problem = "LONGATTN_CPU_ISA='" + std::string(env) +
               "' is not one of scalar, avx2, avx512, avx512_bf16, amx, amx_model (exactly, lower case)" + using_best;
  return best;
}

std::atomic<int>& active_isa_slot() {
  static std::atomic<int> slot{int(initial_isa())};
  return slot;
}

const CpuKernelTable& kernels_for(CpuIsa isa) {
  switch (isa) {
#if defined(LONGATTN_HAVE_AMX)
    case CpuIsa::kAmx: return amx_kernels();
#endif
#if defined(LONGATTN_HAVE_AMX_MODEL)
    case CpuIsa::kAmxModel: return amx_model_kernels();
#endif
#if defined(LONGATTN_HAVE_AVX512_BF16)
    case CpuIsa::kAvx512Bf16: return avx512_bf16_kernels();
#endif
#if defined(LONGATTN_HAVE_AVX512)
    case CpuIsa::kAvx512: return avx512_kernels();
#endif
#if defined(LONGATTN_HAVE_AVX2)
    case CpuIsa::kAvx2: return avx2_kernels();
#endif
    default: return scalar_kernels();
  }
}

}  // namespace

const CpuKernelTable& active_kernels() { return kernels_for(active_cpu_isa()); }

namespace {

// KV cache: k_new / v_new rows go to positions cache_seqlens[b] .. + seqlen_new - 1 (checked to fit), heads intact.
void append_to_cache(const AttentionParams& p) {
  const int64_t elem = p.dtype == DType::kFloat32 ? 4 : 2;
  const auto copy = [&](const void* src, const BshdStrides& s_st, void* cache, const BshdStrides& c_st, int64_t dim) {
    for (int64_t b = 0; b < p.batch; ++b)
      for (int64_t t = 0; t < p.seqlen_new; ++t) {
        const int64_t pos = int64_t(p.cache_seqlens[b]) + t;
        const int64_t row = p.block_table ? int64_t(p.block_table[b * p.block_table_stride + pos / p.page_size]) *
                                                    c_st.batch + (pos % p.page_size) * c_st.seq
                                          : b * c_st.batch + pos * c_st.seq;
        for (int64_t h = 0; h < p.heads_k; ++h)
          std::memcpy(static_cast<char*>(cache) + (row + h * c_st.head) * elem,
                      static_cast<const char*>(src) + (b * s_st.batch + t * s_st.seq + h * s_st.head) * elem,
                      size_t(dim * elem));
      }
  };
  copy(p.k_new, p.k_new_stride, const_cast<void*>(p.k), p.k_stride, p.head_dim);
  copy(p.v_new, p.v_new_stride, const_cast<void*>(p.v), p.v_stride, p.head_dim_v);
}

}  // namespace

Status attention_forward(const AttentionParams& p) {
  const CpuKernelTable& k = active_kernels();
  ThreadPool& pool = ThreadPool::instance();
  if (p.cache_seqlens && p.k_new && p.seqlen_new > 0) append_to_cache(p);
  if (p.batch == 0 || p.seqlen_q == 0) return Status::Ok();
  CallPlan plan(p, k.queries_per_group, pool.num_threads(), k.decode_columns);
  std::vector<float> partial;
  if (plan.splits > 1) {  // normalised partial outputs and lses of every split, merged below
    const int64_t rows = int64_t(plan.splits) * p.batch * p.heads_q * p.seqlen_q;
    partial.resize(size_t(rows * (p.head_dim_v + 1)));
    plan.partial_o = partial.data();
    plan.partial_lse = partial.data() + rows * p.head_dim_v;
  }
  pool.parallel_for(int64_t(plan.items.size()), k.workspace_floats(p), [&](int64_t item, float* ws) {
    k.run_work_item(plan, plan.items[item], ws);
  });
  if (plan.splits > 1) {
    const int64_t rows = p.batch * p.heads_q * p.seqlen_q, per_item = 64;
    pool.parallel_for((rows + per_item - 1) / per_item, 0, [&](int64_t item, float*) {
      k.merge_splits(plan, item * per_item, std::min(rows, (item + 1) * per_item));
    });
  }
  return Status::Ok();
}

}  // namespace cpu

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return "scalar";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx512Bf16: return "avx512_bf16";
    case CpuIsa::kAmx: return "amx";
    case CpuIsa::kAmxModel: return "amx_model";
  }
  return "unknown";
}

bool cpu_isa_supported(CpuIsa isa) { return cpu::cpu_has(isa); }
bool cpu_amx_fp16_supported() { return cpu::cpu_has(CpuIsa::kAmx) && cpu::cpu_has_amx_fp16(); }

CpuIsa best_cpu_isa() {  // amx_model is a test build: never the default
  if (cpu::cpu_has(CpuIsa::kAmx)) return CpuIsa::kAmx;
  if (cpu::cpu_has(CpuIsa::kAvx512Bf16)) return CpuIsa::kAvx512Bf16;
  if (cpu::cpu_has(CpuIsa::kAvx512)) return CpuIsa::kAvx512;
  if (cpu::cpu_has(CpuIsa::kAvx2)) return CpuIsa::kAvx2;
  return CpuIsa::kScalar;
}

CpuIsa active_cpu_isa() { return CpuIsa(cpu::active_isa_slot().load()); }

Status set_cpu_isa(CpuIsa isa) {
  if (std::find(std::begin(cpu::kAllIsas), std::end(cpu::kAllIsas), isa) == std::end(cpu::kAllIsas))
    return Status::Invalid("isa: expected scalar, avx2, avx512, avx512_bf16, amx or amx_model");
  if (!cpu::cpu_has(isa))
    return Status::Unsupported(std::string("isa: ") + cpu_isa_name(isa) +
                               " is not compiled into this build or not supported by this CPU");
  cpu::active_isa_slot().store(int(isa));
  return Status::Ok();
}

int num_threads() { return cpu::ThreadPool::instance().num_threads(); }

Status set_num_threads(int n) {
  if (n < 1 || n > 1024)
    return Status::Invalid("num_threads: got " + std::to_string(n) + ", expected 1..1024");
  cpu::ThreadPool::instance().set_num_threads(n);
  return Status::Ok();
}

const char* environment_warnings() {
  static const std::string warnings = [] {
    std::string isa_problem;
    cpu::initial_isa(&isa_problem);
    const std::string threads_problem = cpu::num_threads_env_problem();
    return isa_problem + (!isa_problem.empty() && !threads_problem.empty() ? "\n" : "") + threads_problem;
  }();
  return warnings.c_str();
}

}  // namespace longattn
