// The emulator's internals, shared by runtime.cpp (fibers, scheduling, launches, barriers, collectives),
// memcheck.cpp (the access checks) and ptx_model.cpp (the PTX instructions). Not seen by kernels.
//
// Execution model: a launch's blocks are spread over a few OS threads ("workers"). A worker runs one block at a time:
// each CUDA thread of the block is a fiber with its own stack, switched cooperatively. A fiber runs until it blocks —
// at __syncthreads (until every thread of the block arrives), at a warp collective (until every lane of its mask
// arrives; the last one computes the result for all) — or exits. Shared memory is one arena per worker with a shadow
// byte per byte (who wrote/read it in which barrier interval) for the race and initialisation checks.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "device_api.h"
#include "longattn/cuda_emulator.h"

namespace longattn::emulator::detail {

constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kMaxWarps = kMaxThreadsPerBlock / 32;
constexpr size_t kMaxSharedBytes = 232448;  // the largest per-block opt-in of any emulated architecture (sm90)
constexpr size_t kStaticSharedLimit = 48 * 1024;
constexpr uint16_t kManyReaders = 0xffff;
constexpr size_t kStackSlot = 128 * 1024;  // each fiber's stack: an aligned slot of this size (a power of two)

// ---- device properties ----------------------------------------------------------------------------------------------
struct DeviceProperties {
  int major, minor, multiprocessors;
  size_t shared_per_block;        // without opt-in
  size_t shared_per_block_optin;  // the most dynamic + static shared memory a block may have
};
DeviceProperties device_properties(int compute_capability);

// ---- memory the kernels may touch -----------------------------------------------------------------------------------
struct Buffer {
  uintptr_t begin, end;
  std::string name;
  bool writable;
};

// ---- warp collectives -----------------------------------------------------------------------------------------------
enum class Collective : uint8_t { kShuffle, kVote, kSync, kLdmatrix, kMma };
const char* collective_name(Collective kind, int subkind);

struct Operand {  // one lane's input
  uint64_t bits;
  int arg, width, predicate;
  const void* address;
  uint32_t a[4], b[2];
  float c[4];
};
struct Result {  // one lane's output
  uint64_t bits;
  uint32_t r[4];
  float d[4];
};
struct InFlight {  // a collective some lanes of `mask` have reached
  Collective kind;
  int subkind;
  unsigned mask, arrived;
  const char* file;
  int line;
};
struct Warp {
  unsigned exists = 0, exited = 0;
  uint16_t sync_epoch = 0;  // advanced by __syncwarp: orders shared-memory accesses of its lanes
  int n_in_flight = 0;
  InFlight in_flight[32];
  Operand op[32];
  Result res[32];
};

// ---- threads and blocks ---------------------------------------------------------------------------------------------
struct AsyncCopy {  // one cp.async: `bytes` bytes (source captured at issue) land at shared offset `offset` at its wait
  uint32_t offset;
  uint8_t bytes;
  uint8_t data[16];
  const char* file;
  int line;
};

enum class FiberState : uint8_t { kReady, kBarrier, kCollective, kExited };

struct Block;
struct Worker;
struct Launch;

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out
  char* stack_lo = nullptr;
  size_t stack_size = 0;
  Worker* worker = nullptr;
  Block* block = nullptr;
  int tid = 0, warp = 0, lane = 0;
  uint3 idx{0, 0, 0};
  FiberState state = FiberState::kReady;
  std::vector<AsyncCopy> open_group;          // issued, not yet committed
  std::deque<std::vector<AsyncCopy>> groups;  // committed, oldest first
};

struct ShadowByte {  // per byte of shared memory
  uint32_t gen;          // == Block::gen: written during this block (else: never written)
  uint32_t write_epoch;  // barrier interval of the last write
  uint32_t read_epoch;   // barrier interval of the last read(s)
  uint16_t writer, reader;  // threads; reader = kManyReaders when several read in read_epoch
  uint16_t write_wsync, read_wsync;  // their warps' __syncwarp epoch at the access
  uint16_t pending_tid;  // issuer of an in-flight cp.async into this byte
  uint8_t pending;       // a cp.async into this byte is in flight
};

struct Block {
  Launch* launch = nullptr;
  uint3 idx{0, 0, 0};
  uint64_t linear = 0;
  int nthreads = 0, live = 0, exited = 0;
  char* smem = nullptr;
  size_t dynamic_bytes = 0, used_bytes = 0;
  uint32_t gen = 0, epoch = 1;
  // the barrier being gathered
  int bar_arrived = 0, bar_mode = 0, bar_accum = 0, bar_result = 0;
  const char* bar_file = nullptr;
  int bar_line = 0;
  std::vector<Warp> warps;
  struct StaticShared {
    const void* site;
    size_t offset;
  };
  std::vector<StaticShared> statics;
  size_t static_bytes = 0;
  bool failed = false;
};

struct Counters {
  int64_t blocks = 0, threads = 0, barriers = 0, warp_collectives = 0, mma = 0, ldmatrix = 0, cp_async = 0,
          checked_accesses = 0;
};

struct Worker {
  int index = 0;
  std::vector<Fiber> fibers;
  char* stacks = nullptr;
  size_t stacks_bytes = 0;
  char* arena_lo = nullptr;  // the shared-memory arena with guard zones on both sides
  size_t arena_span = 0;
  char* smem = nullptr;  // the usable part
  std::vector<ShadowByte> shadow;
  uint32_t gen = 0;
  void* scheduler_sp = nullptr;
  std::vector<int> ready;
  size_t ready_head = 0;
  std::mt19937_64 rng;
  Block block;
  Counters counters;
};  // created once, never destroyed: its stack region identifies the running fiber

struct Launch {
  const LaunchRequest* request = nullptr;
  std::string kernel;  // "flash_fwd_kernel<__half, 64>"
  dim3 grid, block;
  uint64_t n_blocks = 0;
  int threads_per_block = 0;
  Options options;
  DeviceProperties device{};
  std::vector<uint64_t> order;  // block visiting order (a permutation when shuffling)
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::string error;
  cudaError_t error_code = cudaSuccess;
  std::vector<Buffer> buffers;  // sorted by begin: the call's buffers and the parameter space
};

// ---- runtime.cpp ----------------------------------------------------------------------------------------------------
Fiber* current_fiber();             // null outside kernels
Fiber& running_fiber(const char* what);  // the running thread, or a fatal error naming `what`
// Records a device-side failure of the running thread (the first one of a launch wins) and stops its block.
void report(Fiber& f, cudaError_t code, const std::string& what);
[[noreturn]] void abandon(Fiber& f);  // never returns: the failed block's threads are not resumed
Result& warp_collective(Collective kind, int subkind, unsigned mask, const Operand& op, const char* file, int line);
std::string source(const char* file, int line);  // "flash_fwd.cuh:123"
bool memcheck_enabled();
std::vector<Buffer> session_buffers();

// ---- memcheck.cpp ---------------------------------------------------------------------------------------------------
enum class Access : uint8_t { kRead, kWrite, kAsyncIssue, kAsyncComplete, kAtomic };
// Checks (and records, for shared memory) an access of `bytes` bytes by thread f; reports and abandons on a fault.
// `what` names the instruction for the message.
void check_access(Fiber& f, uintptr_t address, size_t bytes, Access kind, const char* what);
// Only the shared-memory part: `offset` within the block's shared memory.
void check_shared(Fiber& f, size_t offset, size_t bytes, Access kind, const char* what);
bool is_shared(const Fiber& f, uintptr_t address);
// Whether [address, address + bytes) lies in one registered buffer (writable if `write`); else a description.
bool in_buffers(const std::vector<Buffer>& buffers, uintptr_t address, size_t bytes, bool write, std::string* why);

// ---- ptx_model.cpp --------------------------------------------------------------------------------------------------
void complete_collective(Collective kind, int subkind, unsigned mask, Warp& w, Fiber& last);
void complete_async_group(Fiber& f, std::vector<AsyncCopy>& group);

}  // namespace longattn::emulator::detail
