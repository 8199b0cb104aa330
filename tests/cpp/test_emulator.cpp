// Tests of the CUDA emulator itself: small CUDA kernels, written as they would be for nvcc and compiled for the
// emulator (this file is built like the backend's kernels: LONGATTN_CUDA_EMULATION, instrumented accesses).
//   - the instruction model: mma.m16n8k16 + ldmatrix (plain and .trans) against a plain matmul, shuffles, votes,
//     cp.async zero-fill, atomics, fp16/bf16 rounding;
//   - the checks: a missing __syncthreads, a read before cp.async.wait_group, a wrong fragment index, out-of-bounds
//     and misaligned shared accesses, uninitialised shared reads, global accesses outside the call's buffers, stores
//     to read-only buffers, divergent barriers and collectives, deadlocks, exits with copies in flight, launch limits.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "../../csrc/cuda/emulation/session.h"
#include "../../csrc/cuda/platform.h"
#include "../../csrc/cuda/ptx.cuh"
#include "longattn/cuda_emulator.h"

namespace ptx = longattn::cuda_emulated::ptx;
using longattn::cuda_emulated::launch;
using longattn::emulator::Session;

namespace {

struct Outcome {
  cudaError_t code;
  std::string message;
};

template <auto Kernel, typename... Args>
Outcome run(dim3 grid, dim3 block, size_t smem, const Args&... args) {
  const cudaError_t e = launch<Kernel>(grid, block, smem, nullptr, args...);
  cudaGetLastError();
  return {e, e == cudaSuccess ? std::string() : std::string(cudaGetErrorString(e))};
}

#define EXPECT_FAULT(outcome, text)                                                                    \
  do {                                                                                                 \
    const Outcome o_ = (outcome);                                                                      \
    EXPECT_NE(o_.code, cudaSuccess) << "expected a fault mentioning: " << (text);                      \
    EXPECT_NE(o_.message.find(text), std::string::npos) << "message: " << o_.message;                 \
  } while (0)

class EmulatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_ = longattn::emulator::options();
    longattn::emulator::Options o = saved_;
    o.memcheck = true;
    o.shuffle = false;
    ASSERT_TRUE(longattn::emulator::configure(o).ok());
  }
  void TearDown() override { longattn::emulator::configure(saved_); }
  longattn::emulator::Options saved_;
};

// ---- mma + ldmatrix against a plain matmul ---------------------------------------------------------------------------
// C (16x16 f32) = A (16x16) B (16x16), A row-major, B row-major (k, n); one warp. A via ldmatrix.x4, B via
// ldmatrix.x4.trans (the P·V pattern of the attention kernel) or, with `b_transposed`, Bᵀ stored (n, k) row-major via
// ldmatrix.x4 (the Q·Kᵀ pattern). `swap_a12` injects a wrong fragment index.
template <typename Elem>
struct MmaArgs {
  const Elem* a;   // (16, 16)
  const Elem* b;   // (16, 16): (k, n), or (n, k) when b_transposed
  float* c;        // (16, 16)
  bool b_transposed, swap_a12;
};

template <typename Elem>
__global__ void mma_kernel(MmaArgs<Elem> p) {
  constexpr int kRow = 24;  // padded rows, as the attention kernel pads
  LONGATTN_DYNAMIC_SHARED(unsigned char, smem);
  Elem* sa = reinterpret_cast<Elem*>(smem);
  Elem* sb = sa + 16 * kRow;
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) {
    sa[(i / 16) * kRow + i % 16] = p.a[i];
    sb[(i / 16) * kRow + i % 16] = p.b[i];
  }
  __syncthreads();
  uint32_t a[4], b[4];
  const int mi = lane / 8;
  ptx::ldmatrix_x4(a, sa + ((mi % 2) * 8 + lane % 8) * kRow + (mi / 2) * 8);
  if (p.swap_a12) {
    const uint32_t t = a[1];
    a[1] = a[2];
    a[2] = t;
  }
  if (p.b_transposed)  // rows n, columns k: matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
    ptx::ldmatrix_x4(b, sb + ((mi / 2) * 8 + lane % 8) * kRow + (mi % 2) * 8);
  else  // rows k, columns n: matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15)
    ptx::ldmatrix_x4_trans(b, sb + ((mi % 2) * 8 + lane % 8) * kRow + (mi / 2) * 8);
  float c0[4] = {0, 0, 0, 0}, c1[4] = {0, 0, 0, 0};
  if constexpr (std::is_same_v<Elem, __half>) {
    ptx::mma_m16n8k16_f16(c0, a, b);
    ptx::mma_m16n8k16_f16(c1, a, b + 2);
  } else {
    ptx::mma_m16n8k16_bf16(c0, a, b);
    ptx::mma_m16n8k16_bf16(c1, a, b + 2);
  }
  // C fragment (PTX ISA): value v of lane l is row l/4 + 8 (v/2), column 2 (l%4) + v%2
  for (int v = 0; v < 4; ++v) {
    const int row = lane / 4 + 8 * (v / 2), col = 2 * (lane % 4) + v % 2;
    p.c[row * 16 + col] = c0[v];
    p.c[row * 16 + 8 + col] = c1[v];
  }
}

template <typename Elem>
std::vector<float> run_mma(bool b_transposed, bool swap_a12, std::vector<float>* want) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> small(-8, 8);  // small integers: every product and sum is exact
  std::vector<Elem> a(256), b(256);
  std::vector<float> af(256), bf(256), c(256, NAN);
  for (int i = 0; i < 256; ++i) {
    af[i] = float(small(rng)) / 4, bf[i] = float(small(rng)) / 2;
    a[i] = Elem(af[i]), b[i] = Elem(bf[i]);
  }
  want->assign(256, 0.0f);
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n)
      for (int k = 0; k < 16; ++k) (*want)[m * 16 + n] += af[m * 16 + k] * (b_transposed ? bf[n * 16 + k] : bf[k * 16 + n]);
  Session s;
  s.add("a", a.data(), a.size() * sizeof(Elem), false);
  s.add("b", b.data(), b.size() * sizeof(Elem), false);
  s.add("c", c.data(), c.size() * sizeof(float), true);
  const Outcome o = run<mma_kernel<Elem>>(dim3(1), dim3(32), 2 * 16 * 24 * sizeof(Elem),
                                          MmaArgs<Elem>{a.data(), b.data(), c.data(), b_transposed, swap_a12});
  EXPECT_EQ(o.code, cudaSuccess) << o.message;
  return c;
}

TEST_F(EmulatorTest, MmaWithLdmatrixEqualsAPlainMatmul) {
  for (bool bt : {false, true}) {
    std::vector<float> want;
    EXPECT_EQ(run_mma<__half>(bt, false, &want), want) << "f16, b_transposed=" << bt;
    EXPECT_EQ(run_mma<__nv_bfloat16>(bt, false, &want), want) << "bf16, b_transposed=" << bt;
  }
}

TEST_F(EmulatorTest, AWrongFragmentIndexGivesAWrongProduct) {
  std::vector<float> want;
  EXPECT_NE(run_mma<__half>(true, true, &want), want);
}

TEST_F(EmulatorTest, FragmentLayoutsCoverEachMatrixOnce) {
  struct Shape {
    const char* name;
    int matrices, rows, cols;
  };
  for (const Shape& sh : {Shape{"mma.m16n8k16.a", 1, 16, 16}, Shape{"mma.m16n8k16.b", 1, 16, 8},
                          Shape{"mma.m16n8k16.c", 1, 16, 8}, Shape{"ldmatrix.x4", 4, 8, 8},
                          Shape{"ldmatrix.x4.trans", 4, 8, 8}}) {
    const auto layout = longattn::emulator::fragment_layout(sh.name);
    EXPECT_EQ(int(layout.size()), sh.matrices * sh.rows * sh.cols) << sh.name;
    std::vector<int> seen(size_t(sh.matrices * sh.rows * sh.cols), 0);
    for (const auto& e : layout) {
      ASSERT_TRUE(e.matrix < sh.matrices && e.row < sh.rows && e.col < sh.cols) << sh.name;
      ++seen[size_t((e.matrix * sh.rows + e.row) * sh.cols + e.col)];
    }
    for (int x : seen) EXPECT_EQ(x, 1) << sh.name;
  }
}

// ---- shuffles, votes, atomics --------------------------------------------------------------------------------------
struct IntArgs {
  int* out;
  int n;
};

__global__ void shuffle_kernel(IntArgs p) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int* o = p.out + warp * 32 * 6;
  o[lane] = __shfl_xor_sync(0xffffffffu, lane * 10, 5);
  o[32 + lane] = __shfl_up_sync(0xffffffffu, lane * 10, 3);
  o[64 + lane] = __shfl_down_sync(0xffffffffu, lane * 10, 3, 8);
  o[96 + lane] = __shfl_sync(0xffffffffu, lane * 10, 33);
  o[128 + lane] = int(__ballot_sync(0xffffffffu, lane % 3 == 0));
  o[160 + lane] = __any_sync(0xffffffffu, lane == 17) + 2 * __all_sync(0xffffffffu, lane < 32);
}

TEST_F(EmulatorTest, ShufflesAndVotesFollowThePtxRules) {
  std::vector<int> out(2 * 32 * 6, -1);
  Session s;
  s.add("out", out.data(), out.size() * 4, true);
  const Outcome o = run<shuffle_kernel>(dim3(1), dim3(64), 0, IntArgs{out.data(), 0});
  ASSERT_EQ(o.code, cudaSuccess) << o.message;
  unsigned ballot = 0;
  for (int l = 0; l < 32; l += 3) ballot |= 1u << l;
  for (int w = 0; w < 2; ++w)
    for (int l = 0; l < 32; ++l) {
      const int* x = out.data() + w * 192;
      EXPECT_EQ(x[l], (l ^ 5) * 10);
      EXPECT_EQ(x[32 + l], (l >= 3 ? l - 3 : l) * 10);
      EXPECT_EQ(x[64 + l], (l % 8 + 3 < 8 ? l + 3 : l) * 10);  // width 8: stays in its segment
      EXPECT_EQ(x[96 + l], 10);                                // lane 33 % 32
      EXPECT_EQ(unsigned(x[128 + l]), ballot);
      EXPECT_EQ(x[160 + l], 3);
    }
}

__global__ void atomic_kernel(IntArgs p) {
  LONGATTN_SHARED(int, block_sum);
  if (threadIdx.x == 0) block_sum = 0;
  __syncthreads();
  atomicAdd(&block_sum, 1);
  __syncthreads();
  if (threadIdx.x == 0) atomicAdd(p.out, block_sum);
  atomicMax(p.out + 1, int(blockIdx.x * blockDim.x + threadIdx.x));
}

TEST_F(EmulatorTest, AtomicsOnSharedAndGlobalMemoryAcrossBlocksAndWorkers) {
  std::vector<int> out = {0, -1};
  Session s;
  s.add("out", out.data(), 8, true);
  const Outcome o = run<atomic_kernel>(dim3(37), dim3(96), 0, IntArgs{out.data(), 0});
  ASSERT_EQ(o.code, cudaSuccess) << o.message;
  EXPECT_EQ(out[0], 37 * 96);
  EXPECT_EQ(out[1], 37 * 96 - 1);
}

// ---- cp.async ------------------------------------------------------------------------------------------------------
struct CopyArgs {
  const float* src;  // 4 * 32 floats
  float* dst;
  int wait;          // 0: no wait before the read (a bug), 1: wait_group then barrier
  int exit_early;    // 1: exit with the copies in flight
};

__global__ void cp_async_kernel(CopyArgs p) {
  LONGATTN_DYNAMIC_SHARED(float, s);
  const int t = threadIdx.x;
  // rows of 4 floats; odd threads zero-fill (src-size 0)
  ptx::cp_async_16(s + 4 * t, p.src + 4 * t, t % 2 ? 0 : 16);
  ptx::cp_async_commit();
  if (p.exit_early) return;
  if (p.wait) {
    ptx::cp_async_wait_group<0>();
    __syncthreads();
  }
  const int from = p.wait ? (t + 1) % 32 : t;  // without the wait: the thread's own row, still in flight
  for (int e = 0; e < 4; ++e) p.dst[4 * t + e] = s[4 * from + e];
}

TEST_F(EmulatorTest, CpAsyncCopiesAndZeroFills) {
  std::vector<float> src(128), dst(128, NAN);
  for (int i = 0; i < 128; ++i) src[i] = float(i);
  Session s;
  s.add("src", src.data(), 512, false);
  s.add("dst", dst.data(), 512, true);
  const Outcome o = run<cp_async_kernel>(dim3(1), dim3(32), 512, CopyArgs{src.data(), dst.data(), 1, 0});
  ASSERT_EQ(o.code, cudaSuccess) << o.message;
  for (int t = 0; t < 32; ++t)
    for (int e = 0; e < 4; ++e) {
      const int from = (t + 1) % 32;
      EXPECT_EQ(dst[4 * t + e], from % 2 ? 0.0f : src[4 * from + e]);
    }
}

TEST_F(EmulatorTest, AReadBeforeCpAsyncWaitIsCaught) {
  std::vector<float> src(128, 1.0f), dst(128);
  Session s;
  s.add("src", src.data(), 512, false);
  s.add("dst", dst.data(), 512, true);
  EXPECT_FAULT((run<cp_async_kernel>(dim3(1), dim3(32), 512, CopyArgs{src.data(), dst.data(), 0, 0})),
               "while a cp.async into it");
}

TEST_F(EmulatorTest, ExitingWithCopiesInFlightIsCaught) {
  std::vector<float> src(128, 1.0f), dst(128);
  Session s;
  s.add("src", src.data(), 512, false);
  s.add("dst", dst.data(), 512, true);
  EXPECT_FAULT((run<cp_async_kernel>(dim3(1), dim3(32), 512, CopyArgs{src.data(), dst.data(), 1, 1})),
               "cp.async copies in flight");
}

// ---- races, uninitialised and out-of-bounds shared memory ----------------------------------------------------------
struct SharedArgs {
  int* out;
  int mode;  // 0: correct, 1: no barrier, 2: read out of bounds, 3: read never written, 4: misaligned, 5: WAR race
};

__global__ void shared_kernel(SharedArgs p) {
  LONGATTN_DYNAMIC_SHARED(int, s);
  const int t = threadIdx.x, n = blockDim.x;
  if (p.mode != 3 || t != 5) s[t] = t * 3;
  if (p.mode != 1) __syncthreads();
  int x = p.mode == 1 ? (t > 0 ? s[t - 1] : 0) : s[(t + 1) % n];  // mode 1: thread t - 1 wrote it, no barrier
  if (p.mode == 2 && t == 7) x = s[n + 1];
  if (p.mode == 4 && t == 0) x = *reinterpret_cast<int*>(reinterpret_cast<char*>(s) + 2);
  if (p.mode == 5) s[(t + 2) % n] = x;  // overwrites what another thread read in this interval
  p.out[t] = x;
}

Outcome run_shared(int mode, std::vector<int>* out) {
  out->assign(64, -1);
  Session s;
  s.add("out", out->data(), 256, true);
  return run<shared_kernel>(dim3(1), dim3(64), 64 * 4, SharedArgs{out->data(), mode});
}

TEST_F(EmulatorTest, CorrectSharedMemoryUseRunsClean) {
  std::vector<int> out;
  const Outcome o = run_shared(0, &out);
  ASSERT_EQ(o.code, cudaSuccess) << o.message;
  for (int t = 0; t < 64; ++t) EXPECT_EQ(out[t], ((t + 1) % 64) * 3);
}

TEST_F(EmulatorTest, AMissingBarrierIsARace) {
  std::vector<int> out;
  EXPECT_FAULT(run_shared(1, &out), "shared-memory race");
}

TEST_F(EmulatorTest, AWriteAfterAnotherThreadsReadInOneIntervalIsARace) {
  std::vector<int> out;
  EXPECT_FAULT(run_shared(5, &out), "shared-memory race");
}

TEST_F(EmulatorTest, AnOutOfBoundsSharedReadIsCaught) {
  std::vector<int> out;
  EXPECT_FAULT(run_shared(2, &out), "outside the block's 256 bytes");
}

TEST_F(EmulatorTest, AReadOfNeverWrittenSharedMemoryIsCaught) {
  std::vector<int> out;
  EXPECT_FAULT(run_shared(3, &out), "that no thread of this block has written");
}

TEST_F(EmulatorTest, AMisalignedSharedReadIsCaught) {
  std::vector<int> out;
  EXPECT_FAULT(run_shared(4, &out), "misaligned shared-memory read of 4 bytes");
}

TEST_F(EmulatorTest, RacesAreMissedWithTheCheckerOff) {
  longattn::emulator::Options o = longattn::emulator::options();
  o.memcheck = false;
  ASSERT_TRUE(longattn::emulator::configure(o).ok());
  std::vector<int> out;
  EXPECT_EQ(run_shared(1, &out).code, cudaSuccess);
}

__global__ void ldmatrix_oob_kernel(IntArgs p) {
  LONGATTN_DYNAMIC_SHARED(__half, s);
  for (int i = threadIdx.x; i < 8 * 8 * 4; i += 32) s[i] = __half(1.0f);
  __syncthreads();
  uint32_t r[4];
  // a row address one row too far for the last lane
  ptx::ldmatrix_x4(r, s + 8 * (threadIdx.x + (threadIdx.x == 31 ? p.n : 0)));
  p.out[threadIdx.x] = int(r[0]);
}

TEST_F(EmulatorTest, AnLdmatrixRowOutsideSharedMemoryIsCaught) {
  std::vector<int> out(32);
  Session s;
  s.add("out", out.data(), 128, true);
  EXPECT_EQ(run<ldmatrix_oob_kernel>(dim3(1), dim3(32), 512, IntArgs{out.data(), 0}).code, cudaSuccess);
  EXPECT_FAULT((run<ldmatrix_oob_kernel>(dim3(1), dim3(32), 512, IntArgs{out.data(), 1})), "ldmatrix: lane 31");
}

// ---- global memory -----------------------------------------------------------------------------------------------
struct GlobalArgs {
  const float* in;
  float* out;
  int n, mode;  // mode 1: read one past the end of `in`; 2: store into `in`
};

__global__ void global_kernel(GlobalArgs p) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  float x = p.in[i];
  if (p.mode == 1 && i == p.n - 1) x += p.in[i + 1];
  if (p.mode == 2 && i == 3) const_cast<float*>(p.in)[i] = 0.0f;
  p.out[i] = 2 * x;
}

TEST_F(EmulatorTest, GlobalAccessesOutsideTheCallsBuffersAreCaught) {
  std::vector<float> in(101, 1.0f), out(100, 0.0f);
  Session s;
  s.add("in", in.data(), 100 * 4, false);  // the last element is not part of the buffer
  s.add("out", out.data(), 100 * 4, true);
  ASSERT_EQ((run<global_kernel>(dim3(4), dim3(32), 0, GlobalArgs{in.data(), out.data(), 100, 0}).code), cudaSuccess);
  EXPECT_EQ(out[99], 2.0f);
  EXPECT_FAULT((run<global_kernel>(dim3(4), dim3(32), 0, GlobalArgs{in.data(), out.data(), 100, 1})),
               "nearest: in, which ends 0 bytes before it");
  EXPECT_FAULT((run<global_kernel>(dim3(4), dim3(32), 0, GlobalArgs{in.data(), out.data(), 100, 2})),
               "a store into in, which the call passes read-only");
}

// ---- barriers and collectives --------------------------------------------------------------------------------------
__global__ void control_kernel(IntArgs p) {
  const int t = threadIdx.x;
  if (p.n == 1) {  // divergent barrier
    if (t < 32) __syncthreads();
    else __syncthreads();
  } else if (p.n == 2) {  // some threads exit, the others meet at a barrier
    if (t >= 32) return;
    __syncthreads();
  } else if (p.n == 3) {  // divergent shuffles
    int x = t;
    if (t % 2) x = __shfl_xor_sync(0xffffffffu, x, 1);
    else x = __shfl_xor_sync(0xffffffffu, x, 1);
    p.out[t] = x;
  } else if (p.n == 4) {  // deadlock: warp 0 waits at a shuffle for a lane that waits at the barrier
    if (t == 3 || t >= 32) __syncthreads();
    else p.out[t] = __shfl_xor_sync(0xffffffffu, t, 1);
  } else if (p.n == 5) {
    __trap();
  }
}

TEST_F(EmulatorTest, BarrierAndCollectiveMisuseIsCaught) {
  std::vector<int> out(64);
  Session s;
  s.add("out", out.data(), 256, true);
  EXPECT_FAULT((run<control_kernel>(dim3(1), dim3(64), 0, IntArgs{out.data(), 1})), "divergent barrier");
  EXPECT_FAULT((run<control_kernel>(dim3(1), dim3(64), 0, IntArgs{out.data(), 2})),
               "a barrier must be reached by every thread");
  EXPECT_FAULT((run<control_kernel>(dim3(1), dim3(64), 0, IntArgs{out.data(), 3})), "divergent warp collective");
  EXPECT_FAULT((run<control_kernel>(dim3(1), dim3(64), 0, IntArgs{out.data(), 4})), "deadlock");
  EXPECT_FAULT((run<control_kernel>(dim3(1), dim3(64), 0, IntArgs{out.data(), 5})), "kernel executed __trap()");
  EXPECT_EQ((run<control_kernel>(dim3(1), dim3(64), 0, IntArgs{out.data(), 0}).code), cudaSuccess);
}

// ---- launch limits -----------------------------------------------------------------------------------------------
TEST_F(EmulatorTest, LaunchesAreCheckedAgainstTheDevicesLimits) {
  std::vector<int> out(64);
  Session s;
  s.add("out", out.data(), 256, true);
  EXPECT_FAULT((run<control_kernel>(dim3(1), dim3(2048), 0, IntArgs{out.data(), 0})), "at most 1024 threads");
  EXPECT_FAULT((run<control_kernel>(dim3(1, 70000), dim3(32), 0, IntArgs{out.data(), 0})), "y, z in 1..65535");
  EXPECT_FAULT((run<control_kernel>(dim3(1), dim3(32), 64 * 1024, IntArgs{out.data(), 0})),
               "needs cudaFuncSetAttribute");
  ASSERT_EQ(cudaFuncSetAttribute(control_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024), cudaSuccess);
  EXPECT_EQ((run<control_kernel>(dim3(1), dim3(32), 64 * 1024, IntArgs{out.data(), 0}).code), cudaSuccess);
  EXPECT_FAULT((run<control_kernel>(dim3(1), dim3(32), 200 * 1024, IntArgs{out.data(), 0})),
               "exceed the sm_80 per-block maximum");
  longattn::emulator::Options o = longattn::emulator::options();
  o.compute_capability = 90;  // a new device context: the attribute must be set again
  ASSERT_TRUE(longattn::emulator::configure(o).ok());
  EXPECT_FAULT((run<control_kernel>(dim3(1), dim3(32), 64 * 1024, IntArgs{out.data(), 0})),
               "needs cudaFuncSetAttribute");
  o.compute_capability = 70;
  EXPECT_FALSE(longattn::emulator::configure(o).ok());
}

// ---- scheduling ---------------------------------------------------------------------------------------------------
TEST_F(EmulatorTest, ShuffledSchedulingGivesTheSameResultsForCorrectKernels) {
  std::vector<int> ref(2 * 32 * 6), got(2 * 32 * 6);
  {
    Session s;
    s.add("out", ref.data(), ref.size() * 4, true);
    ASSERT_EQ(run<shuffle_kernel>(dim3(1), dim3(64), 0, IntArgs{ref.data(), 0}).code, cudaSuccess);
  }
  longattn::emulator::Options o = longattn::emulator::options();
  o.shuffle = true;
  for (uint64_t seed : {1u, 2u, 3u}) {
    o.seed = seed;
    ASSERT_TRUE(longattn::emulator::configure(o).ok());
    Session s;
    s.add("out", got.data(), got.size() * 4, true);
    ASSERT_EQ(run<shuffle_kernel>(dim3(1), dim3(64), 0, IntArgs{got.data(), 0}).code, cudaSuccess);
    EXPECT_EQ(got, ref);
  }
}

// ---- fp16 / bf16 conversions --------------------------------------------------------------------------------------
TEST(EmulatorHalfTypes, RoundToNearestEven) {
  using longattn::emulator::float_to_bf16_bits;
  using longattn::emulator::float_to_half_bits;
  using longattn::emulator::half_bits_to_float;
  EXPECT_EQ(float_to_half_bits(1.0f), 0x3c00);
  EXPECT_EQ(float_to_half_bits(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_half_bits(65519.0f), 0x7bff);
  EXPECT_EQ(float_to_half_bits(65520.0f), 0x7c00);  // ties to even -> infinity
  EXPECT_EQ(float_to_half_bits(1.0f + 0x1p-11f), 0x3c00);  // halfway, even stays
  EXPECT_EQ(float_to_half_bits(1.0f + 3 * 0x1p-11f), 0x3c02);  // halfway, odd rounds up
  EXPECT_EQ(float_to_half_bits(0x1p-24f), 0x0001);  // smallest subnormal
  EXPECT_EQ(float_to_half_bits(0x1p-25f), 0x0000);  // halfway to it: even (zero)
  EXPECT_EQ(float_to_half_bits(-0.0f), 0x8000);
  EXPECT_TRUE(std::isnan(half_bits_to_float(float_to_half_bits(NAN))));
  EXPECT_EQ(half_bits_to_float(0x0001), 0x1p-24f);
  for (uint32_t h = 0; h < 0x7c00; ++h) EXPECT_EQ(float_to_half_bits(half_bits_to_float(uint16_t(h))), h);
  EXPECT_EQ(float_to_bf16_bits(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16_bits(1.0f + 0x1p-8f), 0x3f80);  // halfway, even stays
  EXPECT_EQ(float_to_bf16_bits(1.0f + 3 * 0x1p-8f), 0x3f82);
  EXPECT_EQ(float_to_bf16_bits(INFINITY), 0x7f80);
}

}  // namespace
