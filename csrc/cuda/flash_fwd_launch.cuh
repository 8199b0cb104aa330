// The launcher template of flash_fwd_kernel; each csrc/cuda/inst/*.cu instantiates it for one (dtype, head dim),
// so the instantiations compile in parallel and a build compiles only what dispatch needs.
#pragma once

#include "flash_fwd.cuh"

namespace longattn::LONGATTN_CUDA_NS {

template <typename Elem, int D>
cudaError_t launch_flash_fwd(const FlashFwdParams& p, dim3 grid, void* stream) {
  constexpr int smem = smem_bytes<D>();
  // More than 48 KiB of dynamic shared memory must be asked for. The attribute belongs to the current device's
  // context, so it is set on every launch (cheap; a function attribute, not a stream operation, so it is allowed
  // under CUDA-graph capture).
  if (smem > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(flash_fwd_kernel<Elem, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
  }
  return launch<flash_fwd_kernel<Elem, D>>(grid, dim3(kThreads), smem, stream, p);
}

}  // namespace longattn::LONGATTN_CUDA_NS
