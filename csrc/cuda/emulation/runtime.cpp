// The emulator's execution engine: fibers and their context switch, the worker threads, launches (checked against
// the emulated device's limits), the block scheduler, barriers, warp collectives, and the runtime API subset.
// See runtime.h for the model.
#include "runtime.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <thread>

#include "session.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>  // tell AddressSanitizer when the stack changes (ASan test builds)
#define LONGATTN_ASAN_FIBERS 1
#endif

namespace longattn::emulator {
namespace detail {
namespace {

// ---- global state -----------------------------------------------------------------------------------------------------
std::recursive_mutex g_device_mutex;  // one emulated device: sessions and launches are serialised
Options g_options;
std::vector<Buffer> g_session_buffers;
struct FunctionAttribute {
  const void* function;
  int max_dynamic_smem;
};
std::vector<FunctionAttribute> g_function_attributes;  // per emulated device context

struct AtomicStats {
  std::atomic<int64_t> launches{0}, blocks{0}, threads{0}, barriers{0}, warp_collectives{0}, mma{0}, ldmatrix{0},
      cp_async{0}, checked_accesses{0};
} g_stats;

thread_local cudaError_t tls_last_error = cudaSuccess;
thread_local cudaError_t tls_message_code = cudaSuccess;
thread_local std::string tls_message;
// The running CUDA thread is found from the stack pointer: every fiber stack lies in a worker's stack region, and
// regions are never unmapped (workers live for the process). No thread-local lookup on the hot path of the memory
// checker, and no static-TLS requirement for a dlopen'ed module.
constexpr int kMaxWorkers = 64;
struct StackRegion {
  uintptr_t lo;
  size_t bytes;
  Worker* worker;
};
StackRegion g_regions[kMaxWorkers];
std::atomic<int> g_n_regions{0};

cudaError_t host_error(cudaError_t code, const std::string& message) {
  tls_last_error = code;
  tls_message_code = code;
  tls_message = "CUDA emulator: " + message;
  return code;
}

// ---- context switch -------------------------------------------------------------------------------------------------
// switch_context(save, load): saves the callee-saved registers and the FP control words on the current stack, stores
// the stack pointer in *save, and resumes the context whose stack pointer is `load`.
#if defined(__x86_64__)
extern "C" void longattn_emu_switch(void** save, void* load);
extern "C" void longattn_emu_fiber_start();
asm(R"(
  .text
  .p2align 4
  .globl longattn_emu_switch
  .hidden longattn_emu_switch
  .type longattn_emu_switch,@function
longattn_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr 8(%rsp)
  fldcw (%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size longattn_emu_switch, .-longattn_emu_switch

  .p2align 4
  .globl longattn_emu_fiber_start
  .hidden longattn_emu_fiber_start
  .type longattn_emu_fiber_start,@function
longattn_emu_fiber_start:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size longattn_emu_fiber_start, .-longattn_emu_fiber_start
)");
inline void switch_context(void** save, void* load) { longattn_emu_switch(save, load); }
#else
// Portable fallback: ucontext (slower: swapcontext saves the signal mask with a system call).
struct PortableContext {
  ucontext_t ctx;
};
inline void switch_context(void** save, void* load) {
  PortableContext*& mine = *reinterpret_cast<PortableContext**>(save);
  if (!mine) mine = new PortableContext;
  swapcontext(&mine->ctx, &static_cast<PortableContext*>(load)->ctx);
}
#endif

extern "C" void longattn_emu_fiber_main(Fiber* f);

// The two directions of a switch. `forever`: the fiber is never resumed (exited or abandoned).
#if defined(LONGATTN_ASAN_FIBERS)
thread_local void* tls_scheduler_stack_bottom = nullptr;
thread_local size_t tls_scheduler_stack_size = 0;
#endif
inline void enter_fiber(Worker& w, Fiber& f) {
#if defined(LONGATTN_ASAN_FIBERS)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack_lo, f.stack_size);
  switch_context(&w.scheduler_sp, f.sp);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  switch_context(&w.scheduler_sp, f.sp);
#endif
}
int pop_ready(Worker& w, bool shuffle);

// The running fiber stops (blocked, exited or failed): the next ready thread of the block runs, directly (one
// switch instead of two through the scheduler), or the scheduler when none is ready or the launch has failed.
inline void leave_fiber(Fiber& f, bool forever) {
#if defined(LONGATTN_ASAN_FIBERS)  // always through the scheduler: its stack is the one AddressSanitizer knows
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(forever ? nullptr : &fake, tls_scheduler_stack_bottom, tls_scheduler_stack_size);
  switch_context(&f.sp, f.worker->scheduler_sp);
  __sanitizer_finish_switch_fiber(fake, const_cast<const void**>(&tls_scheduler_stack_bottom),
                                  &tls_scheduler_stack_size);
#else
  (void)forever;
  Worker& w = *f.worker;
  const Block& b = *f.block;
  if (!b.failed && !b.launch->failed.load(std::memory_order_relaxed)) {
    const int next = pop_ready(w, b.launch->options.shuffle);
    if (next >= 0) {
      if (&w.fibers[next] != &f) switch_context(&f.sp, w.fibers[next].sp);
      return;
    }
  }
  switch_context(&f.sp, w.scheduler_sp);
#endif
}
inline void fiber_started() {
#if defined(LONGATTN_ASAN_FIBERS)
  __sanitizer_finish_switch_fiber(nullptr, const_cast<const void**>(&tls_scheduler_stack_bottom),
                                  &tls_scheduler_stack_size);
#endif
}
struct FiberAbort {};  // thrown to unwind a failed thread's stack back to its entry

constexpr size_t kGuardBytes = 4096;  // the lowest page of each stack slot: an overflow faults, never corrupts
constexpr size_t kArenaGuard = 64 * 1024;

void init_stack(Fiber& f) {
#if defined(LONGATTN_ASAN_FIBERS)
  // Threads of a failed block are never resumed: their frames' redzones would stay poisoned for the next block.
  ASAN_UNPOISON_MEMORY_REGION(f.stack_lo, f.stack_size);
#endif
#if defined(__x86_64__)
  char* top = f.stack_lo + f.stack_size;
  auto* sp = reinterpret_cast<uint64_t*>(top - 88);  // after `ret` into the trampoline: rsp = top - 16, aligned
  uint16_t fcw;
  uint32_t mxcsr;
  asm volatile("fnstcw %0" : "=m"(fcw));
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  sp[0] = fcw;
  sp[1] = mxcsr;
  sp[2] = sp[3] = 0;                                            // r15, r14
  sp[4] = reinterpret_cast<uint64_t>(&longattn_emu_fiber_main);  // r13: what the trampoline calls
  sp[5] = reinterpret_cast<uint64_t>(&f);                        // r12: its argument
  sp[6] = sp[7] = 0;                                            // rbx, rbp
  sp[8] = reinterpret_cast<uint64_t>(&longattn_emu_fiber_start);
  f.sp = sp;
#else
  auto* pc = static_cast<PortableContext*>(f.sp);
  if (!pc) pc = new PortableContext;
  getcontext(&pc->ctx);
  pc->ctx.uc_stack.ss_sp = f.stack_lo;
  pc->ctx.uc_stack.ss_size = f.stack_size;
  pc->ctx.uc_link = nullptr;
  makecontext(&pc->ctx, reinterpret_cast<void (*)()>(&longattn_emu_fiber_main), 1, &f);
  f.sp = pc;
#endif
}

void* map_memory(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    std::fprintf(stderr, "longattn CUDA emulator: mmap of %zu bytes failed\n", bytes);
    std::abort();
  }
  return p;
}

void prepare_worker(Worker& w) {
  if (!w.stacks) {
    // kStackSlot-aligned slots, so a thread's own stack is the slot of its stack pointer (see plain_access)
    w.stacks_bytes = size_t(kMaxThreadsPerBlock) * kStackSlot;
    char* mapped = static_cast<char*>(map_memory(w.stacks_bytes + kStackSlot));
    w.stacks = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(mapped) + kStackSlot - 1) & ~(kStackSlot - 1));
    w.fibers.resize(kMaxThreadsPerBlock);
    for (int t = 0; t < kMaxThreadsPerBlock; ++t) {
      char* slot = w.stacks + size_t(t) * kStackSlot;
      mprotect(slot, kGuardBytes, PROT_NONE);
      w.fibers[t].stack_lo = slot + kGuardBytes;
      w.fibers[t].stack_size = kStackSlot - kGuardBytes;
      w.fibers[t].worker = &w;
    }
    const int i = g_n_regions.load();
    g_regions[i] = {reinterpret_cast<uintptr_t>(w.stacks), w.stacks_bytes, &w};
    g_n_regions.store(i + 1);  // published after the entry is complete
  }
  if (!w.arena_lo) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    const size_t usable = (kMaxSharedBytes + page - 1) / page * page;
    w.arena_span = usable + 2 * kArenaGuard;
    w.arena_lo = static_cast<char*>(map_memory(w.arena_span));
    w.smem = w.arena_lo + kArenaGuard;
    w.shadow.assign(kMaxSharedBytes, ShadowByte{});
    w.block.warps.resize(kMaxWarps);
  }
}

// ---- scheduling -----------------------------------------------------------------------------------------------------
void wake(Fiber& f) {
  f.state = FiberState::kReady;
  f.worker->ready.push_back(f.tid);
}

int pop_ready(Worker& w, bool shuffle) {
  if (w.ready_head >= w.ready.size()) {
    w.ready.clear();
    w.ready_head = 0;
    return -1;
  }
  if (shuffle) {
    std::uniform_int_distribution<size_t> pick(w.ready_head, w.ready.size() - 1);
    std::swap(w.ready[w.ready_head], w.ready[pick(w.rng)]);
  }
  return w.ready[w.ready_head++];
}

// Blocks the running fiber until something wakes it.
void block_here(Fiber& f, FiberState why) {
  f.state = why;
  leave_fiber(f, false);
}

std::string describe_thread(const Fiber& f) {
  std::ostringstream os;
  os << "thread (" << f.idx.x << "," << f.idx.y << "," << f.idx.z << ") = warp " << f.warp << " lane " << f.lane;
  return os.str();
}

std::string describe_block(const Block& b) {
  std::ostringstream os;
  os << "block (" << b.idx.x << "," << b.idx.y << "," << b.idx.z << ")";
  return os.str();
}

void report_block(Block& b, cudaError_t code, const std::string& what, const Fiber* f) {
  b.failed = true;
  Launch& L = *b.launch;
  std::lock_guard<std::mutex> lock(L.error_mutex);
  if (L.failed.exchange(true)) return;  // the first error of a launch is the one reported
  L.error_code = code;
  L.error = what + " [kernel " + L.kernel + ", " + describe_block(b) + (f ? ", " + describe_thread(*f) : "") + "]";
}

void report_deadlock(Worker& w, Block& b) {
  std::ostringstream os;
  os << "deadlock: no thread of the block can run;";
  if (b.bar_arrived) os << " " << b.bar_arrived << " wait at __syncthreads (" << source(b.bar_file, b.bar_line) << ")";
  for (size_t i = 0; i * 32 < size_t(b.nthreads); ++i) {
    const Warp& wp = b.warps[i];
    for (int c = 0; c < wp.n_in_flight; ++c) {
      const InFlight& x = wp.in_flight[c];
      os << "; warp " << i << ": lanes 0x" << std::hex << x.arrived << " of mask 0x" << x.mask << std::dec
         << " wait at " << collective_name(x.kind, x.subkind) << " (" << source(x.file, x.line) << ")";
    }
  }
  os << " (" << b.exited << " threads have exited)";
  (void)w;
  report_block(b, cudaErrorLaunchFailure, os.str(), nullptr);
}

void run_block(Worker& w, Launch& L, uint64_t linear) {
  Block& b = w.block;
  b.launch = &L;
  b.linear = linear;
  const uint64_t gx = L.grid.x, gy = L.grid.y;
  b.idx = {unsigned(linear % gx), unsigned((linear / gx) % gy), unsigned(linear / (gx * gy))};
  b.nthreads = L.threads_per_block;
  b.live = b.nthreads;
  b.exited = 0;
  b.smem = w.smem;
  b.dynamic_bytes = L.request->dynamic_smem;
  b.used_bytes = b.dynamic_bytes;
  b.statics.clear();
  b.static_bytes = 0;
  std::memset(b.smem, 0xff, b.dynamic_bytes);  // never-written shared memory reads as NaN in every float format
  if (++w.gen == 0) {                          // generations wrapped: forget every shadow byte
    std::fill(w.shadow.begin(), w.shadow.end(), ShadowByte{});
    w.gen = 1;
  }
  b.gen = w.gen;
  b.epoch = 1;
  b.bar_arrived = 0;
  b.failed = false;
  const int n_warps = (b.nthreads + 31) / 32;
  for (int i = 0; i < n_warps; ++i) {
    Warp& wp = b.warps[i];
    const int lanes = std::min(32, b.nthreads - 32 * i);
    wp.exists = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
    wp.exited = 0;
    wp.sync_epoch = 0;
    wp.n_in_flight = 0;
  }
  const unsigned bx = L.block.x, by = L.block.y;
  w.ready.clear();
  w.ready_head = 0;
  for (int t = 0; t < b.nthreads; ++t) {
    Fiber& f = w.fibers[t];
    f.block = &b;
    f.tid = t;
    f.warp = t / 32;
    f.lane = t % 32;
    f.idx = {unsigned(t) % bx, (unsigned(t) / bx) % by, unsigned(t) / (bx * by)};
    f.state = FiberState::kReady;
    f.open_group.clear();
    f.groups.clear();
    init_stack(f);
    w.ready.push_back(t);
  }
  const bool shuffle = L.options.shuffle;
  if (shuffle) w.rng.seed(L.options.seed * 0x9e3779b97f4a7c15ull + linear * 0xbf58476d1ce4e5b9ull + 1);
  while (!b.failed && !L.failed.load(std::memory_order_relaxed)) {
    const int next = pop_ready(w, shuffle);
    if (next < 0) {
      if (b.live > 0) report_deadlock(w, b);
      break;
    }
    enter_fiber(w, w.fibers[next]);
  }
  w.counters.blocks += 1;
  w.counters.threads += b.nthreads;
}

void work(Worker& w, Launch& L) {
  w.counters = Counters{};
  for (;;) {
    if (L.failed.load(std::memory_order_relaxed)) break;
    const uint64_t i = L.next.fetch_add(1);
    if (i >= L.n_blocks) break;
    run_block(w, L, L.order.empty() ? i : L.order[i]);
  }
  g_stats.blocks += w.counters.blocks;
  g_stats.threads += w.counters.threads;
  g_stats.barriers += w.counters.barriers;
  g_stats.warp_collectives += w.counters.warp_collectives;
  g_stats.mma += w.counters.mma;
  g_stats.ldmatrix += w.counters.ldmatrix;
  g_stats.cp_async += w.counters.cp_async;
  g_stats.checked_accesses += w.counters.checked_accesses;
}

// Worker 0 belongs to the launching thread; workers 1.. have OS threads of their own. Workers and threads are
// created when first needed and live for the process (their stack regions identify fibers, see current_fiber).
class WorkerPool {
 public:
  void run(Launch& L, int n) {
    n = std::clamp(n, 1, kMaxWorkers);
    const int active = int(std::min<uint64_t>(uint64_t(n), std::max<uint64_t>(1, L.n_blocks)));
    for (int i = 0; i < active; ++i)
      if (!workers_[i]) {
        workers_[i] = new Worker{};
        workers_[i]->index = i;
        prepare_worker(*workers_[i]);  // here, on one thread: it publishes the worker's stack region
      }
    while (int(threads_started_) < active - 1) {
      const int index = ++threads_started_;
      std::thread([this, index] { loop(index); }).detach();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &L;
      active_ = active;
      running_ = active - 1;
      ++generation_;
    }
    start_.notify_all();
    work(*workers_[0], L);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return running_ == 0; });
    job_ = nullptr;
  }

  // In a forked child only the forking thread exists: forget the others (their workers are kept).
  void after_fork_in_child() {
    new (&mutex_) std::mutex;
    new (&start_) std::condition_variable;
    new (&done_) std::condition_variable;
    threads_started_ = 0;
    running_ = 0;
  }

 private:
  void loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      Launch* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        start_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (index >= active_) continue;
        job = job_;
      }
      work(*workers_[index], *job);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        --running_;
      }
      done_.notify_all();
    }
  }

  Worker* workers_[kMaxWorkers] = {};
  int threads_started_ = 0;
  std::mutex mutex_;
  std::condition_variable start_, done_;
  uint64_t generation_ = 0;
  Launch* job_ = nullptr;
  int active_ = 0, running_ = 0;
};

WorkerPool& pool() {
  static WorkerPool* p = [] {
    auto* created = new WorkerPool;  // never destroyed: its threads run until the process ends
    pthread_atfork(nullptr, nullptr, [] { pool().after_fork_in_child(); });
    return created;
  }();
  return *p;
}

int default_workers() {
  const unsigned hw = std::thread::hardware_concurrency();
  return int(std::clamp<unsigned>(hw == 0 ? 1 : hw, 1, 8));
}

std::string kernel_name(const char* signature) {
  std::string s = signature ? signature : "?";
  const auto at = s.find("Kernel = ");
  if (at == std::string::npos) return s;
  size_t end = s.find(';', at);
  if (end == std::string::npos) end = s.find(", Args", at);
  if (end == std::string::npos) end = s.find(']', at);
  std::string name = s.substr(at + 9, end == std::string::npos ? std::string::npos : end - at - 9);
  if (!name.empty() && name[0] == '&') name.erase(0, 1);
  for (const char* ns : {"longattn::cuda_emulated::", "longattn::"}) {
    for (size_t p; (p = name.find(ns)) != std::string::npos;) name.erase(p, std::strlen(ns));
  }
  return name;
}

std::string arch_name(const DeviceProperties& d) { return "sm_" + std::to_string(d.major * 10 + d.minor); }

}  // namespace

DeviceProperties device_properties(int cc) {
  switch (cc) {
    case 75: return {7, 5, 40, 48 * 1024, 65536};
    case 80: return {8, 0, 108, 48 * 1024, 166912};
    case 86: return {8, 6, 84, 48 * 1024, 101376};
    case 89: return {8, 9, 128, 48 * 1024, 101376};
    default: return {9, 0, 132, 48 * 1024, 232448};
  }
}


Fiber* current_fiber() {
  const auto sp = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
  const int n = g_n_regions.load(std::memory_order_acquire);
  for (int i = 0; i < n; ++i) {
    const StackRegion& r = g_regions[i];
    if (sp - r.lo < r.bytes) return &r.worker->fibers[(sp - r.lo) / kStackSlot];
  }
  return nullptr;
}

Fiber& running_fiber(const char* what) {
  Fiber* f = current_fiber();
  if (!f) {
    std::fprintf(stderr, "longattn CUDA emulator: %s called outside an emulated kernel\n", what);
    std::abort();
  }
  return *f;
}

void report(Fiber& f, cudaError_t code, const std::string& what) { report_block(*f.block, code, what, &f); }

void abandon(Fiber& f) {
  (void)f;
  throw FiberAbort{};  // caught at the bottom of the fiber's stack (longattn_emu_fiber_main)
}

std::string source(const char* file, int line) {
  std::string s = file ? file : "?";
  const auto slash = s.find_last_of('/');
  if (slash != std::string::npos) s.erase(0, slash + 1);
  return s + ":" + std::to_string(line);
}

bool memcheck_enabled() {
  Fiber* f = current_fiber();
  return f ? f->block->launch->options.memcheck : g_options.memcheck;
}

std::vector<Buffer> session_buffers() { return g_session_buffers; }

namespace {
bool same_site(const char* f1, int l1, const char* f2, int l2) {
  return l1 == l2 && (f1 == f2 || (f1 && f2 && std::strcmp(f1, f2) == 0));
}
}  // namespace

Result& warp_collective(Collective kind, int subkind, unsigned mask, const Operand& op, const char* file, int line) {
  Fiber& f = running_fiber(collective_name(kind, subkind));
  Block& b = *f.block;
  Warp& w = b.warps[f.warp];
  const unsigned bit = 1u << f.lane;
  auto fail = [&](const std::string& what) {
    report(f, cudaErrorLaunchFailure,
           std::string(collective_name(kind, subkind)) + " (" + source(file, line) + "): " + what);
    abandon(f);
  };
  if (!(mask & bit)) {
    std::ostringstream os;
    os << "called by lane " << f.lane << " with mask 0x" << std::hex << mask << ", which does not include it";
    fail(os.str());
  }
  if (mask & ~w.exists) {
    std::ostringstream os;
    os << "mask 0x" << std::hex << mask << " names lanes that do not exist in this warp (lanes 0x" << w.exists
       << " exist: blockDim has " << std::dec << b.nthreads << " threads)";
    fail(os.str());
  }
  if (mask & w.exited) {
    std::ostringstream os;
    os << "mask 0x" << std::hex << mask << " includes lanes 0x" << (mask & w.exited) << " that have exited";
    fail(os.str());
  }
  InFlight* c = nullptr;
  for (int i = 0; i < w.n_in_flight; ++i) {
    InFlight& x = w.in_flight[i];
    if (x.mask == mask) {
      c = &x;
    } else if (x.mask & mask) {
      std::ostringstream os;
      os << "mask 0x" << std::hex << mask << " overlaps lanes 0x" << x.arrived << " that wait at "
         << collective_name(x.kind, x.subkind) << " (" << source(x.file, x.line) << ") with mask 0x" << x.mask
         << ": divergent warp collectives";
      fail(os.str());
    }
  }
  if (!c) {
    c = &w.in_flight[w.n_in_flight++];
    *c = InFlight{kind, subkind, mask, 0u, file, line};
  } else if (c->kind != kind || c->subkind != subkind || !same_site(c->file, c->line, file, line)) {
    std::ostringstream os;
    os << "lane " << f.lane << " arrives here while lanes 0x" << std::hex << c->arrived << std::dec << " of its warp wait at "
       << collective_name(c->kind, c->subkind) << " (" << source(c->file, c->line)
       << "): divergent warp collective (every lane of the mask must execute the same one)";
    fail(os.str());
  }
  w.op[f.lane] = op;
  c->arrived |= bit;
  if (c->arrived != mask) {
    block_here(f, FiberState::kCollective);
    return w.res[f.lane];
  }
  const InFlight done = *c;
  f.worker->counters.warp_collectives += 1;
  *c = w.in_flight[--w.n_in_flight];  // remove it before computing: the results may wake lanes into new ones
  complete_collective(done.kind, done.subkind, done.mask, w, f);
  if (b.failed) abandon(f);
  for (unsigned m = done.mask & ~bit; m; m &= m - 1) wake(f.worker->fibers[f.warp * 32 + __builtin_ctz(m)]);
  return w.res[f.lane];
}

}  // namespace detail

using namespace detail;

// ---- fiber entry and exit -------------------------------------------------------------------------------------------
namespace detail {
namespace {
void thread_exit(Fiber& f) {
  Block& b = *f.block;
  size_t pending = f.open_group.size();
  for (const auto& g : f.groups) pending += g.size();
  if (pending) {
    const AsyncCopy& first = f.open_group.empty() ? f.groups.front().front() : f.open_group.front();
    report(f, cudaErrorLaunchFailure,
           "thread exited with " + std::to_string(pending) + " cp.async copies in flight (the first issued at " +
               source(first.file, first.line) + "); wait for them (cp.async.wait_group) before exiting");
    abandon(f);
  }
  Warp& w = b.warps[f.warp];
  const unsigned bit = 1u << f.lane;
  for (int i = 0; i < w.n_in_flight; ++i) {
    const InFlight& x = w.in_flight[i];
    if ((x.mask & bit) && !(x.arrived & bit)) {
      report(f, cudaErrorLaunchFailure,
             "thread exited while lanes of its warp wait for it at " + std::string(collective_name(x.kind, x.subkind)) +
                 " (" + source(x.file, x.line) + ")");
      abandon(f);
    }
  }
  if (b.bar_arrived > 0) {
    report(f, cudaErrorLaunchFailure,
           "thread exited while " + std::to_string(b.bar_arrived) + " threads wait at __syncthreads (" +
               source(b.bar_file, b.bar_line) + "): a barrier must be reached by every thread of the block");
    abandon(f);
  }
  f.state = FiberState::kExited;
  --b.live;
  ++b.exited;
  w.exited |= bit;
}
}  // namespace

extern "C" void longattn_emu_fiber_main(Fiber* f) {
  fiber_started();
  try {
    const LaunchRequest& r = *f->block->launch->request;
    r.run_thread(r.params);
    thread_exit(*f);
  } catch (const FiberAbort&) {
    // the block has failed; its threads are not resumed
  }
  leave_fiber(*f, true);
  __builtin_unreachable();
}
}  // namespace detail

// ---- the running thread ---------------------------------------------------------------------------------------------
uint3 thread_idx() { return running_fiber("threadIdx").idx; }
uint3 block_idx() { return running_fiber("blockIdx").block->idx; }
uint3 block_dim() {
  const dim3 d = running_fiber("blockDim").block->launch->block;
  return {d.x, d.y, d.z};
}
uint3 grid_dim() {
  const dim3 d = running_fiber("gridDim").block->launch->grid;
  return {d.x, d.y, d.z};
}

int block_barrier(int predicate, int mode, const char* file, int line) {
  static const char* kNames[] = {"__syncthreads", "__syncthreads_count", "__syncthreads_and", "__syncthreads_or"};
  Fiber& f = running_fiber(kNames[mode & 3]);
  Block& b = *f.block;
  auto fail = [&](const std::string& what) {
    report(f, cudaErrorLaunchFailure, std::string(kNames[mode & 3]) + " (" + source(file, line) + "): " + what);
    abandon(f);
  };
  if (b.exited > 0)
    fail("reached after " + std::to_string(b.exited) + " threads of the block exited; a barrier must be reached by "
         "every thread of the block");
  if (b.bar_arrived == 0) {
    b.bar_file = file;
    b.bar_line = line;
    b.bar_mode = mode;
    b.bar_accum = mode == 2 ? 1 : 0;
  } else if (!same_site(b.bar_file, b.bar_line, file, line) || b.bar_mode != mode) {
    fail("thread arrives here while " + std::to_string(b.bar_arrived) + " threads wait at " +
         kNames[b.bar_mode & 3] + " (" + source(b.bar_file, b.bar_line) + "): divergent barrier");
  }
  const int p = predicate != 0;
  b.bar_accum = mode == 1 ? b.bar_accum + p : mode == 2 ? (b.bar_accum & p) : (b.bar_accum | p);
  if (++b.bar_arrived < b.live) {
    block_here(f, FiberState::kBarrier);
    return b.bar_result;
  }
  b.bar_result = b.bar_accum;
  b.bar_arrived = 0;
  ++b.epoch;
  f.worker->counters.barriers += 1;
  for (int t = 0; t < b.nthreads; ++t) {
    Fiber& o = f.worker->fibers[t];
    if (o.state == FiberState::kBarrier) wake(o);
  }
  return b.bar_result;
}

unsigned active_mask() {
  Fiber& f = running_fiber("__activemask");
  const Warp& w = f.block->warps[f.warp];
  return w.exists & ~w.exited;
}

// ---- shared memory ------------------------------------------------------------------------------------------------
void* dynamic_shared_base() { return running_fiber("extern __shared__").block->smem; }

void* static_shared(const void* site, size_t bytes, size_t align) {
  Fiber& f = running_fiber("__shared__");
  Block& b = *f.block;
  for (const auto& s : b.statics)
    if (s.site == site) return b.smem + s.offset;
  // Static shared variables follow the dynamic part (the GPU puts them first; only the offsets differ).
  const size_t a = std::max<size_t>(align, 16);
  const size_t offset = (b.used_bytes + a - 1) / a * a;
  const Launch& L = *b.launch;
  if (b.static_bytes + bytes > kStaticSharedLimit || offset + bytes > L.device.shared_per_block_optin) {
    report(f, cudaErrorLaunchOutOfResources,
           "__shared__ variables of " + std::to_string(b.static_bytes + bytes) + " bytes with " +
               std::to_string(b.dynamic_bytes) + " bytes of dynamic shared memory exceed the " + arch_name(L.device) +
               " limits (48 KiB static, " + std::to_string(L.device.shared_per_block_optin) + " bytes in all)");
    abandon(f);
  }
  std::memset(b.smem + offset, 0xff, bytes);
  b.statics.push_back({site, offset});
  b.static_bytes += bytes;
  b.used_bytes = offset + bytes;
  return b.smem + offset;
}

// ---- atomics --------------------------------------------------------------------------------------------------------
namespace {
template <typename U>
uint64_t apply_atomic(U* p, AtomicOp op, uint64_t operand, uint64_t compare, bool is_float, bool is_signed) {
  U cur = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  for (;;) {
    U next = cur;
    const U v = U(operand);
    auto as_f = [](U x) {
      if constexpr (sizeof(U) == 4) return double(bits_float(uint32_t(x)));
      else { double d; std::memcpy(&d, &x, 8); return d; }
    };
    auto from_f = [](double d) {
      if constexpr (sizeof(U) == 4) return U(float_bits(float(d)));
      else { U x; std::memcpy(&x, &d, 8); return x; }
    };
    auto less = [&](U a, U b2) {
      if (is_float) return as_f(a) < as_f(b2);
      if (is_signed) return std::make_signed_t<U>(a) < std::make_signed_t<U>(b2);
      return a < b2;
    };
    switch (op) {
      case AtomicOp::kAdd:
        if (is_float) {
          if constexpr (sizeof(U) == 4) next = U(float_bits(bits_float(uint32_t(cur)) + bits_float(uint32_t(v))));
          else next = from_f(as_f(cur) + as_f(v));
        } else {
          next = U(cur + v);
        }
        break;
      case AtomicOp::kMin: next = less(v, cur) ? v : cur; break;
      case AtomicOp::kMax: next = less(cur, v) ? v : cur; break;
      case AtomicOp::kExch: next = v; break;
      case AtomicOp::kCas: next = cur == U(compare) ? v : cur; break;
      case AtomicOp::kAnd: next = cur & v; break;
      case AtomicOp::kOr: next = cur | v; break;
      case AtomicOp::kXor: next = cur ^ v; break;
    }
    if (__atomic_compare_exchange_n(p, &cur, next, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return uint64_t(cur);
  }
}
}  // namespace

uint64_t atomic_rmw(void* address, int bytes, AtomicOp op, uint64_t operand, uint64_t compare, bool is_float,
                    bool is_signed, const char* file, int line) {
  Fiber& f = running_fiber("atomic");
  const std::string what = "atomic (" + source(file, line) + ")";
  check_access(f, reinterpret_cast<uintptr_t>(address), size_t(bytes), Access::kAtomic, what.c_str());
  return bytes == 4 ? apply_atomic(static_cast<uint32_t*>(address), op, operand, compare, is_float, is_signed)
                    : apply_atomic(static_cast<uint64_t*>(address), op, operand, compare, is_float, is_signed);
}

void device_trap(const char* what, const char* file, int line) {
  Fiber& f = running_fiber(what);
  report(f, cudaErrorLaunchFailure, std::string("kernel executed ") + what + " (" + source(file, line) + ")");
  abandon(f);
}

int64_t clock_counter() {
  static std::atomic<int64_t> ticks{0};
  return ticks.fetch_add(1000);
}

// ---- host-side runtime ------------------------------------------------------------------------------------------------
cudaError_t set_function_attribute(const void* function, cudaFuncAttribute attribute, int value) {
  std::lock_guard<std::recursive_mutex> lock(g_device_mutex);
  const DeviceProperties d = device_properties(g_options.compute_capability);
  if (attribute == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || size_t(value) > d.shared_per_block_optin)
      return host_error(cudaErrorInvalidValue,
                        "cudaFuncSetAttribute(MaxDynamicSharedMemorySize, " + std::to_string(value) + "): the " +
                            arch_name(d) + " maximum is " + std::to_string(d.shared_per_block_optin) + " bytes");
    for (auto& a : g_function_attributes)
      if (a.function == function) {
        a.max_dynamic_smem = value;
        return cudaSuccess;
      }
    g_function_attributes.push_back({function, value});
    return cudaSuccess;
  }
  if (attribute == cudaFuncAttributePreferredSharedMemoryCarveout) {
    if (value < -1 || value > 100)
      return host_error(cudaErrorInvalidValue, "cudaFuncSetAttribute(PreferredSharedMemoryCarveout, " +
                                                   std::to_string(value) + "): expected -1..100");
    return cudaSuccess;
  }
  return host_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: attribute " + std::to_string(int(attribute)) +
                                               " is not modelled by the emulator");
}

cudaError_t memset_async(void* ptr, int value, size_t bytes) {
  std::lock_guard<std::recursive_mutex> lock(g_device_mutex);
  std::string why;
  if (bytes && !in_buffers(g_session_buffers, reinterpret_cast<uintptr_t>(ptr), bytes, true, &why))
    return host_error(cudaErrorInvalidValue, "cudaMemsetAsync of " + std::to_string(bytes) + " bytes: " + why);
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

cudaError_t memcpy_async(void* dst, const void* src, size_t bytes) {
  std::lock_guard<std::recursive_mutex> lock(g_device_mutex);
  std::string why;
  if (bytes && !in_buffers(g_session_buffers, reinterpret_cast<uintptr_t>(dst), bytes, true, &why))
    return host_error(cudaErrorInvalidValue, "cudaMemcpyAsync destination: " + why);
  if (bytes && !in_buffers(g_session_buffers, reinterpret_cast<uintptr_t>(src), bytes, false, &why))
    return host_error(cudaErrorInvalidValue, "cudaMemcpyAsync source: " + why);
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t run_launch(const LaunchRequest& r) {
  std::lock_guard<std::recursive_mutex> lock(g_device_mutex);
  Launch L;
  L.request = &r;
  L.kernel = kernel_name(r.kernel_signature);
  L.grid = r.grid;
  L.block = r.block;
  L.options = g_options;
  L.device = device_properties(g_options.compute_capability);
  const std::string who = "launch of " + L.kernel + ": ";
  auto dims = [](dim3 d) {
    return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
  };
  const uint64_t threads = uint64_t(r.block.x) * r.block.y * r.block.z;
  if (r.block.x < 1 || r.block.y < 1 || r.block.z < 1 || r.block.x > 1024 || r.block.y > 1024 || r.block.z > 64 ||
      threads > uint64_t(kMaxThreadsPerBlock))
    return host_error(cudaErrorInvalidConfiguration,
                      who + "block " + dims(r.block) + ": the device allows x, y <= 1024, z <= 64 and at most 1024 "
                            "threads per block");
  if (r.grid.x < 1 || r.grid.y < 1 || r.grid.z < 1 || r.grid.x > 0x7fffffffu || r.grid.y > 65535 ||
      r.grid.z > 65535)
    return host_error(cudaErrorInvalidConfiguration,
                      who + "grid " + dims(r.grid) + ": the device allows x in 1..2^31-1 and y, z in 1..65535");
  if (r.dynamic_smem > L.device.shared_per_block_optin)
    return host_error(cudaErrorInvalidValue, who + std::to_string(r.dynamic_smem) +
                                                 " bytes of dynamic shared memory exceed the " + arch_name(L.device) +
                                                 " per-block maximum of " +
                                                 std::to_string(L.device.shared_per_block_optin));
  if (r.dynamic_smem > L.device.shared_per_block) {
    int allowed = -1;
    for (const auto& a : g_function_attributes)
      if (a.function == r.kernel) allowed = a.max_dynamic_smem;
    if (allowed < int(r.dynamic_smem))
      return host_error(cudaErrorInvalidValue,
                        who + std::to_string(r.dynamic_smem) + " bytes of dynamic shared memory: above 48 KiB the "
                              "kernel needs cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, "
                              ">= " + std::to_string(r.dynamic_smem) + ") first on this device (" +
                              (allowed < 0 ? std::string("not set") : "set to " + std::to_string(allowed)) + ")");
  }
  L.n_blocks = uint64_t(r.grid.x) * r.grid.y * r.grid.z;
  L.threads_per_block = int(threads);
  L.buffers = g_session_buffers;
  const auto params = reinterpret_cast<uintptr_t>(r.params);
  L.buffers.push_back({params, params + r.params_bytes, "kernel parameters", false});
  std::sort(L.buffers.begin(), L.buffers.end(), [](const Buffer& a, const Buffer& b) { return a.begin < b.begin; });
  if (L.options.shuffle) {
    L.order.resize(L.n_blocks);
    for (uint64_t i = 0; i < L.n_blocks; ++i) L.order[i] = i;
    std::mt19937_64 rng(L.options.seed);
    std::shuffle(L.order.begin(), L.order.end(), rng);
  }
  g_stats.launches += 1;
  pool().run(L, L.options.workers > 0 ? L.options.workers : default_workers());
  if (L.failed) return host_error(L.error_code, L.error);
  return cudaSuccess;
}

// ---- configuration and statistics -------------------------------------------------------------------------------------
bool built() { return true; }

Status configure(const Options& o) {
  if (o.compute_capability != 75 && o.compute_capability != 80 && o.compute_capability != 86 &&
      o.compute_capability != 89 && o.compute_capability != 90)
    return Status::Invalid("compute_capability: got " + std::to_string(o.compute_capability) +
                           ", expected 75, 80, 86, 89 or 90");
  if (o.workers < 0 || o.workers > 64)
    return Status::Invalid("workers: got " + std::to_string(o.workers) + ", expected 0 (the usable cores) to 64");
  std::lock_guard<std::recursive_mutex> lock(g_device_mutex);
  if (o.compute_capability != g_options.compute_capability) g_function_attributes.clear();  // a new device context
  g_options = o;
  return Status::Ok();
}

Options options() {
  std::lock_guard<std::recursive_mutex> lock(g_device_mutex);
  return g_options;
}

Stats stats() {
  Stats s;
  s.launches = g_stats.launches;
  s.blocks = g_stats.blocks;
  s.threads = g_stats.threads;
  s.barriers = g_stats.barriers;
  s.warp_collectives = g_stats.warp_collectives;
  s.mma = g_stats.mma;
  s.ldmatrix = g_stats.ldmatrix;
  s.cp_async = g_stats.cp_async;
  s.checked_accesses = g_stats.checked_accesses;
  return s;
}

void reset_stats() {
  for (auto* c : {&g_stats.launches, &g_stats.blocks, &g_stats.threads, &g_stats.barriers, &g_stats.warp_collectives,
                  &g_stats.mma, &g_stats.ldmatrix, &g_stats.cp_async, &g_stats.checked_accesses})
    c->store(0);
}

// ---- sessions -------------------------------------------------------------------------------------------------------
namespace {
thread_local std::vector<size_t> tls_session_marks;
}

Session::Session() {
  g_device_mutex.lock();
  tls_session_marks.push_back(g_session_buffers.size());
}

Session::~Session() {
  g_session_buffers.resize(tls_session_marks.back());
  tls_session_marks.pop_back();
  g_device_mutex.unlock();
}

void Session::add(const char* name, const void* ptr, size_t bytes, bool writable) {
  if (!ptr || !bytes) return;
  const auto p = reinterpret_cast<uintptr_t>(ptr);
  g_session_buffers.push_back({p, p + bytes, name, writable});
}

void Session::add_strided(const char* name, const void* ptr, size_t element_bytes, const int64_t* sizes,
                          const int64_t* strides, int rank, bool writable) {
  int64_t lo = 0, hi = 0;
  for (int i = 0; i < rank; ++i) {
    if (sizes[i] <= 0) return;  // no elements
    const int64_t span = (sizes[i] - 1) * strides[i];
    (span < 0 ? lo : hi) += span;
  }
  const auto p = reinterpret_cast<const char*>(ptr);
  add(name, p + lo * int64_t(element_bytes), size_t(hi - lo + 1) * element_bytes, writable);
}

}  // namespace longattn::emulator

// ---- the runtime API subset ---------------------------------------------------------------------------------------
using longattn::emulator::detail::host_error;

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device == 0) return cudaSuccess;
  return host_error(cudaErrorInvalidDevice,
                    "cudaSetDevice(" + std::to_string(device) + "): the emulator has one device, 0");
}
cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (device != 0) return host_error(cudaErrorInvalidDevice, "cudaDeviceGetAttribute: no device " +
                                                                 std::to_string(device) + " (the emulator has one)");
  const auto d = longattn::emulator::detail::device_properties(longattn::emulator::options().compute_capability);
  switch (attribute) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = int(d.shared_per_block); return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = d.multiprocessors; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = d.major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = d.minor; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = int(d.shared_per_block_optin); return cudaSuccess;
  }
  return host_error(cudaErrorInvalidValue,
                    "cudaDeviceGetAttribute: attribute " + std::to_string(int(attribute)) + " is not modelled");
}
cudaError_t cudaGetLastError() {
  const cudaError_t e = longattn::emulator::detail::tls_last_error;
  longattn::emulator::detail::tls_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return longattn::emulator::detail::tls_last_error; }
const char* cudaGetErrorString(cudaError_t e) {
  using namespace longattn::emulator::detail;
  if (e != cudaSuccess && e == tls_message_code && !tls_message.empty()) return tls_message.c_str();
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorMisalignedAddress: return "misaligned address";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    default: return "CUDA emulator error";
  }
}
