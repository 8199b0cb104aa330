// The inline PTX longattn's kernels use, one wrapper per instruction: the instruction itself under nvcc, the
// emulator's model of it (csrc/cuda/emulation/ptx_model.cpp) on the host. A kernel never writes `asm` itself, so
// everything it executes is modelled; an instruction missing here cannot be used without adding its model.
// Each wrapper passes its call site to the emulator (divergence checks and messages name it).
#pragma once

#include <cstdint>

#include "platform.h"

namespace longattn::LONGATTN_CUDA_NS::ptx {

#if defined(LONGATTN_CUDA_EMULATION)
#define LONGATTN_PTX_SITE_ONLY const char *file = __builtin_FILE(), int line = __builtin_LINE()
#define LONGATTN_PTX_SITE , LONGATTN_PTX_SITE_ONLY
#define LONGATTN_PTX_AT file, line
#else
#define LONGATTN_PTX_SITE_ONLY
#define LONGATTN_PTX_SITE
#endif

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32: d (16x8 f32) = a (16x16 f16, row) · b (16x8 f16, col) + c,
// register fragments as the PTX ISA lays them out; c is updated in place.
__device__ __forceinline__ void mma_m16n8k16_f16(float c[4], const uint32_t a[4], const uint32_t b[2] LONGATTN_PTX_SITE) {
#if defined(LONGATTN_CUDA_EMULATION)
  ::longattn::emulator::mma_m16n8k16(::longattn::emulator::MmaType::kF16, c, a, b, LONGATTN_PTX_AT);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// The same with bf16 inputs.
__device__ __forceinline__ void mma_m16n8k16_bf16(float c[4], const uint32_t a[4], const uint32_t b[2] LONGATTN_PTX_SITE) {
#if defined(LONGATTN_CUDA_EMULATION)
  ::longattn::emulator::mma_m16n8k16(::longattn::emulator::MmaType::kBF16, c, a, b, LONGATTN_PTX_AT);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: four 8x8 16-bit matrices; lane i gives (in `row`, a pointer into
// shared memory, 16-byte aligned) the address of row i % 8 of matrix i / 8; register j receives matrix j.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row LONGATTN_PTX_SITE) {
#if defined(LONGATTN_CUDA_EMULATION)
  ::longattn::emulator::ldmatrix(4, false, r, row, LONGATTN_PTX_AT);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(static_cast<uint32_t>(__cvta_generic_to_shared(row))));
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row LONGATTN_PTX_SITE) {
#if defined(LONGATTN_CUDA_EMULATION)
  ::longattn::emulator::ldmatrix(4, true, r, row, LONGATTN_PTX_AT);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(static_cast<uint32_t>(__cvta_generic_to_shared(row))));
#endif
}

// cp.async.cg.shared.global [dst], [src], 16, src_bytes: copies src_bytes (0 or 16) bytes global -> shared
// asynchronously and zero-fills the rest of the 16; nothing is read when src_bytes is 0.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes LONGATTN_PTX_SITE) {
#if defined(LONGATTN_CUDA_EMULATION)
  ::longattn::emulator::cp_async(dst, src, 16, src_bytes, LONGATTN_PTX_AT);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                   static_cast<uint32_t>(__cvta_generic_to_shared(dst))),
               "l"(src), "r"(src_bytes));
#endif
}

// cp.async.commit_group: the copies this thread issued since its last commit become one group.
__device__ __forceinline__ void cp_async_commit(LONGATTN_PTX_SITE_ONLY) {
#if defined(LONGATTN_CUDA_EMULATION)
  ::longattn::emulator::cp_async_commit(LONGATTN_PTX_AT);
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// cp.async.wait_group N: waits until at most N of this thread's committed groups are still in flight (the copies
// become visible to this thread; other threads see them after a barrier).
template <int N>
__device__ __forceinline__ void cp_async_wait_group(LONGATTN_PTX_SITE_ONLY) {
#if defined(LONGATTN_CUDA_EMULATION)
  ::longattn::emulator::cp_async_wait_group(N, LONGATTN_PTX_AT);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

#undef LONGATTN_PTX_SITE_ONLY
#undef LONGATTN_PTX_SITE
#undef LONGATTN_PTX_AT

}  // namespace longattn::LONGATTN_CUDA_NS::ptx
