// The emulator's memory checker, a small compute-sanitizer.
//
// Every plain load and store in a kernel's translation unit reaches plain_access(): those files are compiled with
// -fsanitize=thread, which makes the compiler call __tsan_read4 / __tsan_write4 / ... before each access — hooks that
// this file defines (ThreadSanitizer's runtime is not involved, nor linked). Unlike AddressSanitizer's
// instrumentation, it keeps both the load and the store of a read-modify-write, which the race and initialisation
// checks need. The PTX model calls check_access() directly for ldmatrix, cp.async and atomics.
//
// Shared memory (the block's arena): bounds and alignment; a read of a byte never written in this block; a read or
// write of a byte with a cp.async in flight; a race — two threads touching a byte in the same barrier interval, at
// least one writing, without a __syncthreads (or, within a warp, a __syncwarp) between them.
// Global memory: the access must lie inside one buffer the call registered (Session), writable for a store.
// Anything else a kernel touches — its own stack, its parameters' copy — is allowed.
#include <algorithm>
#include <sstream>

#include "runtime.h"

namespace longattn::emulator::detail {
namespace {

std::string hex(uintptr_t x) {
  std::ostringstream os;
  os << "0x" << std::hex << x;
  return os.str();
}

const char* access_name(Access kind) {
  switch (kind) {
    case Access::kRead: return "read";
    case Access::kWrite: return "write";
    case Access::kAsyncIssue: return "cp.async destination";
    case Access::kAsyncComplete: return "cp.async completion";
    case Access::kAtomic: return "atomic";
  }
  return "access";
}

bool is_pow2(size_t n) { return n && !(n & (n - 1)); }

[[noreturn]] void fault(Fiber& f, cudaError_t code, const std::string& what) {
  report(f, code, what);
  abandon(f);
}

// Whether an earlier access by thread `tid` (at its warp's __syncwarp epoch `wsync`) is ordered before one by f.
bool ordered_before(const Fiber& f, uint16_t tid, uint16_t wsync) {
  if (tid == f.tid) return true;
  if (tid == kManyReaders) return false;
  return tid / 32 == f.tid / 32 && wsync != f.block->warps[f.warp].sync_epoch;
}

std::string thread_name(uint16_t tid) {
  return tid == kManyReaders ? std::string("several threads") : "thread " + std::to_string(tid);
}

}  // namespace

bool in_buffers(const std::vector<Buffer>& buffers, uintptr_t address, size_t bytes, bool write, std::string* why) {
  // the last buffer starting at or before `address`
  auto it = std::upper_bound(buffers.begin(), buffers.end(), address,
                             [](uintptr_t a, const Buffer& b) { return a < b.begin; });
  if (it != buffers.begin()) {
    const Buffer& b = *(it - 1);
    if (address + bytes <= b.end) {
      if (!write || b.writable) return true;
      if (why) *why = "a store into " + b.name + ", which the call passes read-only";
      return false;
    }
    if (address < b.end) {
      if (why) *why = "runs " + std::to_string(address + bytes - b.end) + " bytes past the end of " + b.name;
      return false;
    }
  }
  if (why) {
    std::ostringstream os;
    os << "address " << hex(address) << " is outside every buffer of the call";
    const Buffer* nearest = nullptr;
    uintptr_t distance = ~uintptr_t(0);
    for (const Buffer& b : buffers) {
      const uintptr_t d = address < b.begin ? (address + bytes > b.begin ? 0 : b.begin - (address + bytes)) : address - b.end;
      if (d < distance) distance = d, nearest = &b;
    }
    if (nearest)
      os << "; nearest: " << nearest->name << ", which " << (address < nearest->begin ? "starts " : "ends ")
         << distance << " bytes " << (address < nearest->begin ? "after it" : "before it");
    *why = os.str();
  }
  return false;
}

bool is_shared(const Fiber& f, uintptr_t address) {
  return address - reinterpret_cast<uintptr_t>(f.worker->arena_lo) < f.worker->arena_span;
}

void check_shared(Fiber& f, size_t offset, size_t bytes, Access kind, const char* what) {
  Block& b = *f.block;
  if (offset + bytes > b.used_bytes || offset > b.used_bytes) {
    std::ostringstream os;
    os << what << ": shared-memory " << access_name(kind) << " of " << bytes << " bytes at offset "
       << int64_t(offset) << " is outside the block's " << b.used_bytes << " bytes (" << b.dynamic_bytes
       << " dynamic + " << b.static_bytes << " static)";
    fault(f, cudaErrorIllegalAddress, os.str());
  }
  if (is_pow2(bytes) && bytes <= 16 && offset % bytes) {
    fault(f, cudaErrorMisalignedAddress, std::string(what) + ": misaligned shared-memory " + access_name(kind) +
                                             " of " + std::to_string(bytes) + " bytes at offset " +
                                             std::to_string(offset));
  }
  if (!b.launch->options.memcheck) return;
  f.worker->counters.checked_accesses += 1;
  const uint16_t me = uint16_t(f.tid);
  const uint16_t wsync = b.warps[f.warp].sync_epoch;
  ShadowByte* s = f.worker->shadow.data() + offset;
  for (size_t i = 0; i < bytes; ++i) {
    ShadowByte& x = s[i];
    const bool written = x.gen == b.gen;
    auto race = [&](const char* mine, const char* theirs, uint16_t other) {
      std::ostringstream os;
      os << what << ": shared-memory race: " << mine << " of byte " << offset + i << " by thread " << f.tid
         << " and a " << theirs << " by " << thread_name(other)
         << " in the same barrier interval (no __syncthreads between them)";
      fault(f, cudaErrorLaunchFailure, os.str());
    };
    switch (kind) {
      case Access::kRead:
      case Access::kAtomic:
        if (!written)
          fault(f, cudaErrorLaunchFailure,
                std::string(what) + ": read of shared-memory byte " + std::to_string(offset + i) +
                    " that no thread of this block has written");
        if (x.pending)
          fault(f, cudaErrorLaunchFailure,
                std::string(what) + ": read of shared-memory byte " + std::to_string(offset + i) +
                    " while a cp.async into it (issued by thread " + std::to_string(x.pending_tid) +
                    ") is in flight: wait for it (cp.async.wait_group) and __syncthreads first");
        if (kind == Access::kAtomic) break;
        if (x.write_epoch == b.epoch && !ordered_before(f, x.writer, x.write_wsync)) race("read", "write", x.writer);
        if (x.read_epoch != b.epoch) {
          x.read_epoch = b.epoch;
          x.reader = me;
          x.read_wsync = wsync;
        } else if (x.reader != me) {
          x.reader = kManyReaders;
        }
        break;
      case Access::kWrite:
      case Access::kAsyncIssue:
        if (written) {
          if (x.pending)
            fault(f, cudaErrorLaunchFailure,
                  std::string(what) + ": " + access_name(kind) + " of shared-memory byte " +
                      std::to_string(offset + i) + " while a cp.async into it (issued by thread " +
                      std::to_string(x.pending_tid) + ") is in flight");
          if (x.write_epoch == b.epoch && !ordered_before(f, x.writer, x.write_wsync))
            race(access_name(kind), "write", x.writer);
          if (x.read_epoch == b.epoch && !ordered_before(f, x.reader, x.read_wsync))
            race(access_name(kind), "read", x.reader);
        } else {
          x = ShadowByte{};
          x.gen = b.gen;
        }
        if (kind == Access::kAsyncIssue) {
          x.pending = 1;
          x.pending_tid = me;
        } else {
          x.write_epoch = b.epoch;
          x.writer = me;
          x.write_wsync = wsync;
        }
        break;
      case Access::kAsyncComplete:
        x.pending = 0;
        if (x.write_epoch == b.epoch && !ordered_before(f, x.writer, x.write_wsync))
          race("cp.async write", "write", x.writer);
        if (x.read_epoch == b.epoch && !ordered_before(f, x.reader, x.read_wsync))
          race("cp.async write", "read", x.reader);
        x.write_epoch = b.epoch;
        x.writer = me;
        x.write_wsync = wsync;
        break;
    }
  }
}

void check_access(Fiber& f, uintptr_t address, size_t bytes, Access kind, const char* what) {
  if (is_shared(f, address)) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(f.block->smem);
    if (address < base) {
      fault(f, cudaErrorIllegalAddress, std::string(what) + ": shared-memory " + access_name(kind) + " of " +
                                            std::to_string(bytes) + " bytes " + std::to_string(base - address) +
                                            " bytes before the start of the block's shared memory");
    }
    check_shared(f, address - base, bytes, kind, what);
    return;
  }
  if (kind == Access::kAsyncIssue || kind == Access::kAsyncComplete)
    fault(f, cudaErrorIllegalAddress, std::string(what) + ": the destination " + hex(address) +
                                          " is not in shared memory");
  if (is_pow2(bytes) && bytes <= 16 && address % bytes)
    fault(f, cudaErrorMisalignedAddress, std::string(what) + ": misaligned global " + access_name(kind) + " of " +
                                             std::to_string(bytes) + " bytes at " + hex(address));
  if (!f.block->launch->options.memcheck) return;
  f.worker->counters.checked_accesses += 1;
  std::string why;
  const bool write = kind == Access::kWrite || kind == Access::kAtomic;
  if (!in_buffers(f.block->launch->buffers, address, bytes, write, &why))
    fault(f, cudaErrorIllegalAddress,
          std::string(what) + ": global " + access_name(kind) + " of " + std::to_string(bytes) + " bytes: " + why);
}

namespace {
inline void plain_access(const void* p, size_t bytes, bool write) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  // The running thread's own stack (locals, arguments): the kStackSlot-aligned slot of the stack pointer. Most
  // instrumented accesses are these, so this test comes first. (In host code the same test merely skips some of
  // the host stack, which is not checked anyway.)
  const auto sp = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
  if (((a ^ sp) & ~uintptr_t(kStackSlot - 1)) == 0) return;
  Fiber* f = current_fiber();
  if (!f) return;  // host code of the same translation units
  check_access(*f, a, bytes, write ? Access::kWrite : Access::kRead, write ? "store" : "load");
}
}  // namespace

bool plain_access_checks_built() {
#if defined(LONGATTN_EMULATOR_PLAIN_ACCESS_CHECKS)
  return true;
#else
  return false;
#endif
}

}  // namespace longattn::emulator::detail

namespace longattn::emulator {
bool plain_access_checks() { return detail::plain_access_checks_built(); }
}  // namespace longattn::emulator

// The hooks the instrumented kernel translation units call (ThreadSanitizer's entry points, as GCC emits them).
extern "C" {
#define LONGATTN_ACCESS_HOOKS(n)                                                                              \
  void __tsan_read##n(void* p) { longattn::emulator::detail::plain_access(p, n, false); }                     \
  void __tsan_write##n(void* p) { longattn::emulator::detail::plain_access(p, n, true); }
LONGATTN_ACCESS_HOOKS(1)
LONGATTN_ACCESS_HOOKS(2)
LONGATTN_ACCESS_HOOKS(4)
LONGATTN_ACCESS_HOOKS(8)
LONGATTN_ACCESS_HOOKS(16)
#undef LONGATTN_ACCESS_HOOKS
#define LONGATTN_UNALIGNED_HOOKS(n)                                                                           \
  void __tsan_unaligned_read##n(void* p) { longattn::emulator::detail::plain_access(p, n, false); }           \
  void __tsan_unaligned_write##n(void* p) { longattn::emulator::detail::plain_access(p, n, true); }
LONGATTN_UNALIGNED_HOOKS(2)
LONGATTN_UNALIGNED_HOOKS(4)
LONGATTN_UNALIGNED_HOOKS(8)
LONGATTN_UNALIGNED_HOOKS(16)
#undef LONGATTN_UNALIGNED_HOOKS
void __tsan_read_range(void* p, long n) { longattn::emulator::detail::plain_access(p, size_t(n), false); }
void __tsan_write_range(void* p, long n) { longattn::emulator::detail::plain_access(p, size_t(n), true); }
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit(void*) {}
void __tsan_vptr_update(void*, void*) {}
void __tsan_vptr_read(void*) {}
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
}
