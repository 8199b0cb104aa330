// longattn's own persistent thread pool (not OpenMP: a second OpenMP runtime beside torch's can abort a process).
//
// parallel_for(n, fn) runs fn(item, workspace) for item in [0, n) on the workers and the calling thread, handing
// items out one at a time (dynamic scheduling; causal tiles differ in cost). Items are independent, so results do
// not depend on the thread count or on which thread ran an item. One call owns the pool at a time; a call that
// finds it busy (another Python thread) runs its items itself rather than waiting, and so does a forked child.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace longattn::cpu {

class ThreadPool {
 public:
  using ItemFn = std::function<void(int64_t item, float* workspace)>;

  static ThreadPool& instance();
  ~ThreadPool();

  int num_threads();         // workers + the calling thread
  void set_num_threads(int n);  // n >= 1; waits for a running call to finish

  // workspace_floats: scratch each participating thread gets (64-byte aligned, reused across calls).
  void parallel_for(int64_t n, int64_t workspace_floats, const ItemFn& fn);

 private:
  ThreadPool();
  void start_workers(int n_workers);
  void stop_workers();
  void worker_main(uint64_t seen_generation);
  static void run_items(int64_t n, int64_t workspace_floats, const ItemFn& fn, std::atomic<int64_t>* next);

  std::mutex call_mutex_;  // held by the call that owns the workers
  std::mutex state_mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<std::thread> workers_;
  long owner_pid_ = 0;
  bool stopping_ = false;
  uint64_t generation_ = 0;
  int active_ = 0;
  // the job of the current generation
  const ItemFn* job_fn_ = nullptr;
  int64_t job_n_ = 0;
  int64_t job_workspace_ = 0;
  std::atomic<int64_t>* job_next_ = nullptr;
};

// Default thread count: LONGATTN_NUM_THREADS if set and valid, else the CPUs this process may run on.
int default_num_threads();
// Why LONGATTN_NUM_THREADS is ignored (set, but not an integer 1..1024), or "".
std::string num_threads_env_problem();

}  // namespace longattn::cpu
