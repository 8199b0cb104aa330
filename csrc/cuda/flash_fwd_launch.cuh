// The launcher template of flash_fwd_kernel; each csrc/cuda/inst/*.cu instantiates it for one (dtype, head dim),
// so the instantiations compile in parallel and a build compiles only what dispatch needs.
#pragma once

#include <cuda_runtime.h>

#include "flash_fwd.cuh"

namespace longattn::cuda {

template <typename Elem, int D>
void launch_flash_fwd(const FlashFwdParams& p, dim3 grid, void* stream) {
  constexpr int smem = smem_bytes<D>();
  // More than 48 KiB of dynamic shared memory must be asked for; this is a function attribute, not a stream
  // operation, so it is safe under CUDA-graph capture. Set once per instantiation (per process).
  static const cudaError_t attribute_status =
      cudaFuncSetAttribute(flash_fwd_kernel<Elem, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  (void)attribute_status;  // a failure surfaces as a launch error, which the dispatcher reports
  flash_fwd_kernel<Elem, D><<<grid, kThreads, smem, static_cast<cudaStream_t>(stream)>>>(p);
}

}  // namespace longattn::cuda
