// Host-side helpers of the CUDA backend's entry points (cuda_backend.cu, lsh_backend.cu): the device guard, the
// compute-capability check, error mapping and the alignment test of the tensor-core kernels' 16-byte row copies.
#pragma once

#include <string>

#include "longattn/longattn.h"
#include "platform.h"

namespace longattn::LONGATTN_CUDA_NS {

// Makes params.device_index current for the call and restores the previous device afterwards.
struct DeviceGuard {
  int previous = -1;
  cudaError_t status = cudaSuccess;
  explicit DeviceGuard(int device) {
    if (device < 0) return;
    status = cudaGetDevice(&previous);
    if (status == cudaSuccess && previous != device) status = cudaSetDevice(device);
    else previous = -1;
  }
  ~DeviceGuard() {
    if (previous >= 0) cudaSetDevice(previous);
  }
};

// The tensor-core kernel copies rows in 16-byte pieces.
inline bool rows_16_byte_aligned(const void* base, const BshdStrides& s, int64_t elem_bytes) {
  const int64_t step = 16 / elem_bytes;
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && s.batch % step == 0 && s.seq % step == 0 &&
         s.head % step == 0;
}

inline Status cuda_error(const char* what, cudaError_t e) {
  return {StatusCode::kInternal, std::string(what) + ": " + cudaGetErrorString(e)};
}

// No device, no driver, or a driver this build cannot use: a fact about the machine, not a bug in longattn.
inline Status device_error(const char* what, cudaError_t e) {
  const bool no_usable_device = e == cudaErrorNoDevice || e == cudaErrorInvalidDevice ||
                                e == cudaErrorInsufficientDriver || e == cudaErrorInitializationError ||
                                e == cudaErrorDevicesUnavailable || e == cudaErrorSystemNotReady ||
                                e == cudaErrorSystemDriverMismatch || e == cudaErrorCompatNotSupportedOnDevice;
  if (!no_usable_device) return cuda_error(what, e);
  return Status::Unsupported(std::string(what) + ": no usable CUDA device on this machine (" +
                             cudaGetErrorString(e) + "); use CPU tensors, or check the GPU and its driver");
}

// Makes params.device_index current (guard) and checks that the device can run longattn's kernels (compute
// capability 8.0 or newer); `supported` lists what the operation's kernels serve, for the message.
inline Status check_current_device(const DeviceGuard& guard, const char* supported) {
  if (guard.status != cudaSuccess)
    return device_error("device_index: could not make the inputs' device current", guard.status);
  int device = 0, major = 0, minor = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (e != cudaSuccess) return device_error("device: could not query the current CUDA device", e);
  if (major < 8)
    return Status::Unsupported("device: compute capability " + std::to_string(major) + "." + std::to_string(minor) +
                               " is not supported; longattn's CUDA kernels need 8.0 or newer (" + supported + ")");
  return Status::Ok();
}

}  // namespace longattn::LONGATTN_CUDA_NS
