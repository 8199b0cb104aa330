#include "thread_pool.h"

#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

namespace longattn::cpu {
namespace {

// Per-thread scratch, grown on demand and kept for the next call.
struct Workspace {
  float* data = nullptr;
  int64_t capacity = 0;
  ~Workspace() { std::free(data); }
  float* get(int64_t floats) {
    if (floats > capacity) {
      std::free(data);
      const size_t bytes = (size_t(floats) * sizeof(float) + 63) / 64 * 64;
      data = static_cast<float*>(std::aligned_alloc(64, bytes));
      capacity = data ? floats : 0;
    }
    return data;
  }
};
thread_local Workspace tls_workspace;

int usable_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n >= 1) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? int(hw) : 1;
}

// LONGATTN_NUM_THREADS as a count 1..1024, or 0 when unset or unusable.
int env_num_threads() {
  const char* env = std::getenv("LONGATTN_NUM_THREADS");
  if (!env || !*env) return 0;  // unset or empty
  char* end = nullptr;
  const long n = std::strtol(env, &end, 10);
  return end != env && *end == '\0' && n >= 1 && n <= 1024 ? int(n) : 0;
}

}  // namespace

int default_num_threads() {
  const int n = env_num_threads();
  return n ? n : usable_cpus();
}

std::string num_threads_env_problem() {
  const char* env = std::getenv("LONGATTN_NUM_THREADS");
  if (!env || !*env || env_num_threads()) return "";
  return "LONGATTN_NUM_THREADS='" + std::string(env) + "' is not an integer from 1 to 1024: ignored, using " +
         std::to_string(usable_cpus()) + " threads (the CPUs this process may run on)";
}

ThreadPool& ThreadPool::instance() {
  static ThreadPool* pool = new ThreadPool();  // never destroyed: workers may outlive static destruction order
  return *pool;
}

ThreadPool::ThreadPool() { start_workers(default_num_threads() - 1); }

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::start_workers(int n_workers) {
  owner_pid_ = long(getpid());
  stopping_ = false;
  // Workers start from the current generation, read here rather than in the new thread: the job recorded under
  // it belongs to a call that has returned, and a call starting right after this must not be missed.
  const uint64_t current = generation_;
  for (int i = 0; i < n_workers; ++i) workers_.emplace_back([this, current] { worker_main(current); });
}

void ThreadPool::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(state_mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

int ThreadPool::num_threads() {
  std::lock_guard<std::mutex> lock(call_mutex_);
  return int(workers_.size()) + 1;
}

void ThreadPool::set_num_threads(int n) {
  if (n < 1) n = 1;
  std::lock_guard<std::mutex> lock(call_mutex_);
  if (long(getpid()) != owner_pid_) {
    // Forked child: the parent's workers do not exist here; leak their handles (joining or destroying a
    // joinable std::thread would hang or terminate).
    new std::vector<std::thread>(std::move(workers_));
    workers_.clear();
  } else {
    stop_workers();
  }
  start_workers(n - 1);
}

void ThreadPool::run_items(int64_t n, int64_t workspace_floats, const ItemFn& fn, std::atomic<int64_t>* next) {
  float* ws = tls_workspace.get(workspace_floats);
  for (int64_t item = next->fetch_add(1); item < n; item = next->fetch_add(1)) fn(item, ws);
}

void ThreadPool::worker_main(uint64_t seen) {
  std::unique_lock<std::mutex> lock(state_mutex_);
  for (;;) {
    wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
    if (stopping_) return;
    seen = generation_;
    const ItemFn* fn = job_fn_;
    const int64_t n = job_n_, ws = job_workspace_;
    std::atomic<int64_t>* next = job_next_;
    lock.unlock();
    run_items(n, ws, *fn, next);
    lock.lock();
    if (--active_ == 0) done_.notify_all();
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t workspace_floats, const ItemFn& fn) {
  if (n <= 0) return;
  std::atomic<int64_t> next{0};
  std::unique_lock<std::mutex> call(call_mutex_, std::try_to_lock);
  if (!call.owns_lock() || workers_.empty() || n == 1 || long(getpid()) != owner_pid_) {
    run_items(n, workspace_floats, fn, &next);  // busy, single-threaded, or a forked child: run inline
    return;
  }
  {
    std::lock_guard<std::mutex> lock(state_mutex_);
    job_fn_ = &fn;
    job_n_ = n;
    job_workspace_ = workspace_floats;
    job_next_ = &next;
    active_ = int(workers_.size());
    ++generation_;
  }
  wake_.notify_all();
  run_items(n, workspace_floats, fn, &next);
  std::unique_lock<std::mutex> lock(state_mutex_);
  done_.wait(lock, [&] { return active_ == 0; });
}

}  // namespace longattn::cpu
