// The per-ISA entry points of the CPU engine. Each table is defined in its own translation unit, compiled with
// that ISA's flags (kernel_scalar.cpp, kernel_avx2.cpp, kernel_avx512.cpp); cpu_dispatch.cpp picks one at run time.
#pragma once

#include <cstdint>

#include "longattn/longattn.h"
#include "lsh_plan.h"
#include "work_plan.h"

namespace longattn::cpu {

struct CpuKernelTable {
  const char* name;
  int64_t (*workspace_floats)(const AttentionParams&);  // scratch one thread needs
  int64_t queries_per_group;                            // the engine's query group (CallPlan)
  int decode_columns;                                   // columns the decode path takes (0: none)
  void (*run_work_item)(const CallPlan&, const WorkItem&, float* workspace);
  // Key splits: merges the partial results of rows [begin, end) ((batch, head_q, query) order) into out and lse.
  void (*merge_splits)(const CallPlan&, int64_t row_begin, int64_t row_end);
  // LSH attention (lsh_plan.h): scratch per thread, and one item of each phase
  int64_t (*lsh_workspace_floats)(const LshPlan&);
  void (*lsh_hash_item)(const LshPlan&, int64_t item, float* workspace);
  void (*lsh_attend_item)(const LshPlan&, int64_t round, int64_t item, float* workspace);
};

// The table of the active ISA (set_cpu_isa / LONGATTN_CPU_ISA / the best this CPU supports).
const CpuKernelTable& active_kernels();

const CpuKernelTable& scalar_kernels();
#if defined(LONGATTN_HAVE_AVX2)
const CpuKernelTable& avx2_kernels();
#endif
#if defined(LONGATTN_HAVE_AVX512)
const CpuKernelTable& avx512_kernels();
#endif
#if defined(LONGATTN_HAVE_AVX512_BF16)
const CpuKernelTable& avx512_bf16_kernels();
#endif
#if defined(LONGATTN_HAVE_AMX)
const CpuKernelTable& amx_kernels();
#endif
#if defined(LONGATTN_HAVE_AMX_MODEL)
const CpuKernelTable& amx_model_kernels();
#endif

// CPUID: AMX-FP16 (Granite Rapids and later); the amx build runs float16 on tiles only where it is present.
bool cpu_has_amx_fp16();

}  // namespace longattn::cpu
