// What the CUDA toolkit headers and the device builtins give a kernel, modelled for the emulator: keywords, built-in
// variables, barriers, warp collectives, atomics, math, the runtime calls the backend makes and kernel launches.
// Included through csrc/cuda/platform.h when LONGATTN_CUDA_EMULATION is defined; the kernel sources stay CUDA.
//
// Everything that needs the emulator's state (which thread is running, its block's shared memory, the other lanes of
// its warp) is a call into runtime.cpp, which is not instrumented; the kernels' own translation units are compiled
// with -fsanitize=thread's instrumentation so that every plain load and store reaches the memory checker
// (memcheck.cpp).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "half_types.h"

// ---- keywords ------------------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __grid_constant__
#define __restrict__ __restrict
#define __align__(n) alignas(n)

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInsufficientDriver = 35,
  cudaErrorDevicesUnavailable = 46,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorAssert = 710,
  cudaErrorIllegalInstruction = 715,
  cudaErrorMisalignedAddress = 716,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
  cudaErrorSystemNotReady = 802,
  cudaErrorSystemDriverMismatch = 803,
  cudaErrorCompatNotSupportedOnDevice = 804,
  cudaErrorUnknown = 999,
};
enum cudaDeviceAttr : int {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute : int {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

namespace longattn::emulator {

// ---- the running thread ---------------------------------------------------------------------------------------------
uint3 thread_idx();
uint3 block_idx();
uint3 block_dim();
uint3 grid_dim();

// ---- barriers and warp collectives (each call site passes its source location: lanes of one collective must meet
// at the same one, else the emulator reports a divergent collective) -------------------------------------------------
int block_barrier(int predicate, int mode, const char* file, int line);  // mode 0: sync, 1: count, 2: and, 3: or
enum class ShuffleKind : int { kIdx, kUp, kDown, kXor };
uint64_t warp_shuffle(ShuffleKind kind, unsigned mask, uint64_t bits, int lane_arg, int width, const char* file,
                      int line);
enum class VoteKind : int { kBallot, kAny, kAll };
unsigned warp_vote(VoteKind kind, unsigned mask, int predicate, const char* file, int line);
void warp_sync(unsigned mask, const char* file, int line);
unsigned active_mask();

// ---- shared memory ------------------------------------------------------------------------------------------------
void* dynamic_shared_base();
void* static_shared(const void* site, size_t bytes, size_t align);
template <typename T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_base());
}

// ---- atomics (on global or shared memory; checked like any access) -------------------------------------------------
enum class AtomicOp : int { kAdd, kMin, kMax, kExch, kCas, kAnd, kOr, kXor };
uint64_t atomic_rmw(void* address, int bytes, AtomicOp op, uint64_t operand, uint64_t compare, bool is_float,
                    bool is_signed, const char* file, int line);

// ---- the PTX instructions the kernels use (reached through csrc/cuda/ptx.cuh; modelled in ptx_model.cpp) -----------
enum class MmaType : int { kF16, kBF16 };
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32: c (16x8) += a (16x16) * b (16x8), per-lane fragments
void mma_m16n8k16(MmaType type, float c[4], const uint32_t a[4], const uint32_t b[2], const char* file, int line);
// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16: `row` is this lane's row address in shared memory
void ldmatrix(int matrices, bool trans, uint32_t* r, const void* row, const char* file, int line);
// cp.async.{ca,cg}.shared.global [dst], [src], cp_bytes, src_bytes: copies src_bytes, zero-fills up to cp_bytes
void cp_async(void* dst, const void* src, int cp_bytes, int src_bytes, const char* file, int line);
void cp_async_commit(const char* file, int line);
void cp_async_wait_group(int pending, const char* file, int line);
void cp_async_wait_all(const char* file, int line);

// ---- diagnostics and host runtime ---------------------------------------------------------------------------------
[[noreturn]] void device_trap(const char* what, const char* file, int line);
int64_t clock_counter();
cudaError_t set_function_attribute(const void* function, cudaFuncAttribute attribute, int value);
cudaError_t memset_async(void* ptr, int value, size_t bytes);
cudaError_t memcpy_async(void* dst, const void* src, size_t bytes);

// ---- kernel launch ------------------------------------------------------------------------------------------------
struct LaunchRequest {
  const char* kernel_signature;  // __PRETTY_FUNCTION__ of launch<Kernel>: names the kernel and its template args
  const void* kernel;            // identity for cudaFuncSetAttribute
  dim3 grid, block;
  size_t dynamic_smem;
  void* stream;
  const void* params;  // the host copy of the arguments: the kernel's "parameter space"
  size_t params_bytes;
  void (*run_thread)(const void* params);  // runs the kernel body for the current thread
};
cudaError_t run_launch(const LaunchRequest& request);

template <auto Kernel, typename... Args>
cudaError_t launch(dim3 grid, dim3 block, size_t smem, void* stream, const Args&... args) {
  using Params = std::tuple<std::decay_t<Args>...>;
  const Params params(args...);
  LaunchRequest r{__PRETTY_FUNCTION__, reinterpret_cast<const void*>(Kernel), grid, block, smem, stream, &params,
                  sizeof(params), [](const void* p) {
                    Params mine = *static_cast<const Params*>(p);  // a thread's own copy of its arguments
                    std::apply(Kernel, mine);
                  }};
  return run_launch(r);
}

}  // namespace longattn::emulator

// ---- built-in variables -------------------------------------------------------------------------------------------
#define threadIdx (::longattn::emulator::thread_idx())
#define blockIdx (::longattn::emulator::block_idx())
#define blockDim (::longattn::emulator::block_dim())
#define gridDim (::longattn::emulator::grid_dim())
constexpr int warpSize = 32;

// ---- barriers, votes, shuffles ------------------------------------------------------------------------------------
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::longattn::emulator::block_barrier(1, 0, file, line);
}
inline int __syncthreads_count(int p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::longattn::emulator::block_barrier(p, 1, file, line);
}
inline int __syncthreads_and(int p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::longattn::emulator::block_barrier(p, 2, file, line);
}
inline int __syncthreads_or(int p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::longattn::emulator::block_barrier(p, 3, file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::longattn::emulator::warp_sync(mask, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::longattn::emulator::warp_vote(::longattn::emulator::VoteKind::kBallot, mask, p, file, line);
}
inline int __any_sync(unsigned mask, int p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return int(::longattn::emulator::warp_vote(::longattn::emulator::VoteKind::kAny, mask, p, file, line));
}
inline int __all_sync(unsigned mask, int p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return int(::longattn::emulator::warp_vote(::longattn::emulator::VoteKind::kAll, mask, p, file, line));
}
inline unsigned __activemask() { return ::longattn::emulator::active_mask(); }

namespace longattn::emulator {
template <typename T>
T shuffle_value(ShuffleKind kind, unsigned mask, T var, int arg, int width, const char* file, int line) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move values of up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = warp_shuffle(kind, mask, bits, arg, width, file, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
}  // namespace longattn::emulator

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  return ::longattn::emulator::shuffle_value(::longattn::emulator::ShuffleKind::kIdx, mask, var, src_lane, width,
                                             file, line);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize, const char* file = __builtin_FILE(),
                 int line = __builtin_LINE()) {
  return ::longattn::emulator::shuffle_value(::longattn::emulator::ShuffleKind::kUp, mask, var, int(delta), width,
                                             file, line);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize, const char* file = __builtin_FILE(),
                   int line = __builtin_LINE()) {
  return ::longattn::emulator::shuffle_value(::longattn::emulator::ShuffleKind::kDown, mask, var, int(delta), width,
                                             file, line);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  return ::longattn::emulator::shuffle_value(::longattn::emulator::ShuffleKind::kXor, mask, var, lane_mask, width,
                                             file, line);
}

// ---- atomics ------------------------------------------------------------------------------------------------------
namespace longattn::emulator {
template <typename T>
T atomic_value(T* address, AtomicOp op, T operand, T compare, const char* file, int line) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomics on 4- and 8-byte values");
  uint64_t a = 0, c = 0;
  std::memcpy(&a, &operand, sizeof(T));
  std::memcpy(&c, &compare, sizeof(T));
  const uint64_t old = atomic_rmw(address, int(sizeof(T)), op, a, c, std::is_floating_point_v<T>,
                                  std::is_signed_v<T>, file, line);
  T out;
  std::memcpy(&out, &old, sizeof(T));
  return out;
}
}  // namespace longattn::emulator
#define LONGATTN_EMULATED_ATOMIC(name, op)                                                                       \
  template <typename T>                                                                                          \
  T name(T* address, T value, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {                \
    return ::longattn::emulator::atomic_value(address, ::longattn::emulator::AtomicOp::op, value, T(), file, line); \
  }
LONGATTN_EMULATED_ATOMIC(atomicAdd, kAdd)
LONGATTN_EMULATED_ATOMIC(atomicMin, kMin)
LONGATTN_EMULATED_ATOMIC(atomicMax, kMax)
LONGATTN_EMULATED_ATOMIC(atomicExch, kExch)
LONGATTN_EMULATED_ATOMIC(atomicAnd, kAnd)
LONGATTN_EMULATED_ATOMIC(atomicOr, kOr)
LONGATTN_EMULATED_ATOMIC(atomicXor, kXor)
#undef LONGATTN_EMULATED_ATOMIC
template <typename T>
T atomicCAS(T* address, T compare, T value, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::longattn::emulator::atomic_value(address, ::longattn::emulator::AtomicOp::kCas, value, compare, file, line);
}

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline long long clock64() { return ::longattn::emulator::clock_counter(); }
[[noreturn]] inline void __trap(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::longattn::emulator::device_trap("__trap()", file, line);
}
template <typename T>
T __ldg(const T* p) {
  return *p;
}

// ---- integer and float intrinsics ---------------------------------------------------------------------------------
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
  return (x >> 16) | (x << 16);
}
inline float __int_as_float(int x) { return ::longattn::emulator::bits_float(uint32_t(x)); }
inline int __float_as_int(float x) { return int(::longattn::emulator::float_bits(x)); }
inline float __uint_as_float(unsigned x) { return ::longattn::emulator::bits_float(x); }
inline unsigned __float_as_uint(float x) { return ::longattn::emulator::float_bits(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
// exp2f, log2f, expf, fmaxf, ... : the C library's, declared by <cmath> in the global namespace.

// CUDA's overloaded integer/float min and max (device code calls them unqualified).
template <typename A, typename B,
          typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(a) : C(b);
}
template <typename A, typename B,
          typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(b) : C(a);
}

// ---- the runtime API subset the backend calls -----------------------------------------------------------------------
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
template <typename F>
cudaError_t cudaFuncSetAttribute(F* function, cudaFuncAttribute attribute, int value) {
  return ::longattn::emulator::set_function_attribute(reinterpret_cast<const void*>(function), attribute, value);
}
inline cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t = nullptr) {
  return ::longattn::emulator::memset_async(ptr, value, bytes);
}
enum cudaMemcpyKind : int { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                            cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t = nullptr) {
  return ::longattn::emulator::memcpy_async(dst, src, bytes);
}
