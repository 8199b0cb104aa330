#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "thread_pool.h"

namespace longattn::cpu {
namespace {

TEST(ThreadPool, RunsEveryItemExactlyOnce) {
  auto& pool = ThreadPool::instance();
  for (int threads : {1, 2, 4}) {
    pool.set_num_threads(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    std::vector<std::atomic<int>> hits(1000);
    pool.parallel_for(1000, 16, [&](int64_t i, float* ws) {
      ws[0] = float(i);  // the workspace is writable
      hits[i].fetch_add(1);
    });
    for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  }
}

TEST(ThreadPool, UsesSeveralThreads) {
  auto& pool = ThreadPool::instance();
  pool.set_num_threads(3);
  std::mutex mu;
  std::set<std::thread::id> ids;
  pool.parallel_for(64, 1, [&](int64_t, float*) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(std::this_thread::get_id());
  });
  EXPECT_GE(ids.size(), 2u);
}

TEST(ThreadPool, ConcurrentCallersAllFinish) {
  auto& pool = ThreadPool::instance();
  pool.set_num_threads(2);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t)
    callers.emplace_back([&] {
      for (int rep = 0; rep < 50; ++rep) pool.parallel_for(100, 8, [&](int64_t i, float*) { total += i; });
    });
  for (auto& c : callers) c.join();
  EXPECT_EQ(total.load(), 4 * 50 * (99 * 100 / 2));
}

TEST(ThreadPool, ResizeThenRunImmediately) {
  // Regression: workers of a rebuilt pool once re-ran the previous call's job (whose state lived on a returned
  // stack frame) or missed a job posted before they first took the lock.
  auto& pool = ThreadPool::instance();
  for (int rep = 0; rep < 300; ++rep) {
    pool.set_num_threads(2 + rep % 3);
    std::atomic<int> count{0};
    pool.parallel_for(37, 4, [&](int64_t, float*) { count.fetch_add(1); });
    ASSERT_EQ(count.load(), 37);
  }
}

TEST(ThreadPool, ZeroItemsIsANoOp) {
  bool ran = false;
  ThreadPool::instance().parallel_for(0, 8, [&](int64_t, float*) { ran = true; });
  EXPECT_FALSE(ran);
}

}  // namespace
}  // namespace longattn::cpu
