// The first include of every CUDA source of longattn. Under nvcc it is the CUDA toolkit; when the host C++ compiler
// builds the same sources for the CUDA emulator (LONGATTN_CUDA_EMULATION, see csrc/cuda/emulation/) it is the
// emulator's model of the same API. Kernels use CUDA as written, except for the three things a host compiler cannot
// take, which go through this header and ptx.cuh:
//   - inline PTX                     -> the wrappers of ptx.cuh
//   - kernel<<<grid, block, ...>>>   -> launch<kernel>(grid, block, smem, stream, args...)
//   - extern __shared__ / __shared__ -> LONGATTN_DYNAMIC_SHARED / LONGATTN_SHARED
// The emulated build of the backend lives in namespace longattn::cuda_emulated, beside the real one
// (longattn::cuda), so one library can hold both.
#pragma once

#include <cstddef>

#if defined(LONGATTN_CUDA_EMULATION)

#include "emulation/device_api.h"
#define LONGATTN_CUDA_NS cuda_emulated

// `extern __shared__ __align__(16) type name[]`: the block's dynamic shared memory
#define LONGATTN_DYNAMIC_SHARED(type, name) type* const name = ::longattn::emulator::dynamic_shared<type>()
// `__shared__ type name`: a per-block variable, allocated when a thread of the block first reaches it
#define LONGATTN_SHARED(type, name)                                                                           \
  static const char name##_site = 0;                                                                          \
  ::longattn::cuda_type<type>& name = *static_cast<::longattn::cuda_type<type>*>(                             \
      ::longattn::emulator::static_shared(&name##_site, sizeof(::longattn::cuda_type<type>),                  \
                                          alignof(::longattn::cuda_type<type>)))

#else

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define LONGATTN_CUDA_NS cuda
#define LONGATTN_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#define LONGATTN_SHARED(type, name) __shared__ ::longattn::cuda_type<type> name

#endif

namespace longattn {

template <typename T>
using cuda_type = T;  // lets a macro argument such as `int[32]` declare an array

namespace LONGATTN_CUDA_NS {

// kernel<<<grid, block, smem, stream>>>(args...), returning the launch's error. On the emulator the kernel runs to
// completion before this returns (streams are in-order no-ops) and a fault inside it is the returned error.
template <auto Kernel, typename... Args>
inline cudaError_t launch(dim3 grid, dim3 block, size_t smem_bytes, void* stream, const Args&... args) {
#if defined(LONGATTN_CUDA_EMULATION)
  return ::longattn::emulator::launch<Kernel>(grid, block, smem_bytes, stream, args...);
#else
  Kernel<<<grid, block, smem_bytes, static_cast<cudaStream_t>(stream)>>>(args...);
  return cudaGetLastError();
#endif
}

}  // namespace LONGATTN_CUDA_NS
}  // namespace longattn
