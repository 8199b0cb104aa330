// longattn's CUDA emulator: the CUDA backend (the same host dispatch and the same kernel source files, compiled by the
// host C++ compiler) run on the CPU by an emulator of the CUDA execution model — blocks, warps as cooperative
// fibers, shared memory, barriers, warp collectives, the PTX instructions the kernels use — with a small
// compute-sanitizer built in. It exists so every CUDA kernel is tested on machines without a GPU; it is slow and
// never meant for real work.
//
// A caller selects it per call with AttentionParams::device = Device::kCudaEmulator and host pointers for every
// buffer. Calls are serialised (one emulated device); options are process-wide.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "longattn/longattn.h"

namespace longattn::emulator {

struct Options {
  int compute_capability = 80;  // 75, 80, 86, 89 or 90: sets the device's properties and launch limits
  // The memory checker: shared-memory bounds, alignment, reads of never-written bytes, races between barriers and
  // reads of cp.async destinations before their wait; global accesses outside the call's buffers. Off = faster.
  bool memcheck = true;
  // Random block order, random thread scheduling within a block and random lane arrival at warp collectives, from
  // `seed`: flushes out assumptions about the order threads run in.
  bool shuffle = false;
  uint64_t seed = 0;
  int workers = 0;  // OS threads that run blocks in parallel; 0 = the usable cores (at most 8)
};

// Whether this build contains the emulator (CMake option LONGATTN_CUDA_EMULATOR) and whether its memory checker
// sees plain loads and stores (needs a compiler with -fsanitize=thread instrumentation; the PTX wrappers are always
// checked).
bool built();
bool plain_access_checks();

Status configure(const Options& options);
Options options();

// Counts since the last reset: what the emulator executed.
struct Stats {
  int64_t launches = 0, blocks = 0, threads = 0, barriers = 0, warp_collectives = 0, mma = 0, ldmatrix = 0,
          cp_async = 0, checked_accesses = 0;
};
Stats stats();
void reset_stats();

// The register fragment layouts the emulator uses, for cross-checking against independent sources.
// `name`: "mma.m16n8k16.a", ".b", ".c" (element (row, col) of the 16x16 A, 16x8 B and 16x8 C/D operands; for B row =
// k, col = n), "ldmatrix.x4" and "ldmatrix.x4.trans" (row, col of the 8x8 matrix `matrix` that lands in
// (lane, register, half)). Each entry: {lane, value index, row, col, matrix}.
struct FragmentElement {
  int lane, value, row, col, matrix;
};
std::vector<FragmentElement> fragment_layout(const std::string& name);

}  // namespace longattn::emulator
