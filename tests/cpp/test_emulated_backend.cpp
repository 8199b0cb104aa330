// The CUDA backend through the public C++ API on the emulator (Device::kCudaEmulator), against the naive double
// reference: what a C++ inference stack's own test suite can do without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "longattn/cuda_emulator.h"
#include "longattn/longattn.h"
#include "reference.h"

namespace longattn {
namespace {

uint16_t to_f16(float f) {
  // round to nearest even through the F16C-free path of the reference: float -> half bits
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);
  if (a < 0x38800000u) {
    const float scaled = std::nearbyint(std::fabs(f) * 0x1p24f);  // subnormal: units of 2^-24 (ties to even)
    return uint16_t(sign | uint32_t(scaled));
  }
  uint32_t r = (a - 0x38000000u) >> 13;
  const uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return uint16_t(sign | r);
}
float from_f16(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  float f = e == 0 ? float(m) * 0x1p-24f : std::ldexp(float(m | 0x400u), int(e) - 25);
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits |= sign;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct Case {
  int64_t batch, seqlen_q, seqlen_k, heads_q, heads_k, head_dim;
  bool causal = false;
  int64_t left = -1, right = -1;
  std::vector<int64_t> dilation = {};
  std::vector<int64_t> global = {};  // positions, global in every batch element
};

void run_case(const Case& c, DType dtype) {
  std::mt19937 rng(11);
  std::normal_distribution<float> dist;
  const int64_t nq = c.batch * c.seqlen_q * c.heads_q * c.head_dim, nk = c.batch * c.seqlen_k * c.heads_k * c.head_dim;
  std::vector<float> q(nq), k(nk), v(nk);
  std::vector<uint16_t> q16(nq), k16(nk), v16(nk);
  for (auto* pair : {&q, &k, &v}) {
    std::vector<uint16_t>& bits = pair == &q ? q16 : pair == &k ? k16 : v16;
    for (size_t i = 0; i < pair->size(); ++i) {
      float x = dist(rng);
      if (dtype == DType::kFloat16) bits[i] = to_f16(x), x = from_f16(bits[i]);
      if (dtype == DType::kBFloat16) bits[i] = testing::to_bf16(x), x = testing::from_bf16(bits[i]);
      (*pair)[i] = x;
    }
  }
  const int64_t no = c.batch * c.seqlen_q * c.heads_q * c.head_dim;
  std::vector<float> out32(no, NAN), lse(c.batch * c.heads_q * c.seqlen_q, NAN);
  std::vector<uint16_t> out16(no, 0x7fff);
  std::vector<uint8_t> global;
  AttentionParams p;
  p.device = Device::kCudaEmulator;
  p.dtype = dtype;
  p.batch = c.batch, p.seqlen_q = c.seqlen_q, p.seqlen_k = c.seqlen_k, p.heads_q = c.heads_q, p.heads_k = c.heads_k;
  p.head_dim = p.head_dim_v = c.head_dim;
  const bool f32 = dtype == DType::kFloat32;
  p.q = f32 ? static_cast<const void*>(q.data()) : q16.data();
  p.k = f32 ? static_cast<const void*>(k.data()) : k16.data();
  p.v = f32 ? static_cast<const void*>(v.data()) : v16.data();
  p.out = f32 ? static_cast<void*>(out32.data()) : out16.data();
  p.lse = lse.data();
  p.q_stride = {c.seqlen_q * c.heads_q * c.head_dim, c.heads_q * c.head_dim, c.head_dim};
  p.k_stride = p.v_stride = {c.seqlen_k * c.heads_k * c.head_dim, c.heads_k * c.head_dim, c.head_dim};
  p.out_stride = p.q_stride;
  p.lse_batch_stride = c.heads_q * c.seqlen_q;
  p.lse_head_stride = c.seqlen_q;
  p.scale = 1.0f / std::sqrt(float(c.head_dim));
  p.causal = c.causal;
  p.window_left = c.left;
  p.window_right = c.right;
  p.dilation = c.dilation.empty() ? nullptr : c.dilation.data();
  if (!c.global.empty()) {
    global.assign(c.batch * c.seqlen_k, 0);
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t pos : c.global) global[b * c.seqlen_k + pos] = 1;
    p.global_tokens = global.data();
    p.global_batch_stride = c.seqlen_k;
    p.global_seq_stride = 1;
  }
  std::vector<uint8_t> workspace(size_t(attention_workspace_bytes(p)));
  p.workspace = workspace.empty() ? nullptr : workspace.data();
  p.workspace_bytes = int64_t(workspace.size());
  const Status st = attention_forward(p);
  ASSERT_TRUE(st.ok()) << st.message;

  std::vector<double> want, want_lse;
  testing::naive_attention(p, q, k, v, &want, &want_lse);
  // P is rounded to the input dtype before P·V on tensor cores (as FlashAttention does): a relative error of the
  // dtype's epsilon on each weight, at most |v| ~ 4 here.
  const double tol = f32 ? 2e-5 : dtype == DType::kFloat16 ? 6e-3 : 5e-2;
  for (int64_t i = 0; i < no; ++i) {
    const double got = f32 ? out32[i] : dtype == DType::kFloat16 ? from_f16(out16[i]) : testing::from_bf16(out16[i]);
    ASSERT_NEAR(got, want[i], tol) << "out element " << i;
  }
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(want_lse[i])) {
      ASSERT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << "lse " << i;
    } else {
      ASSERT_NEAR(lse[i], want_lse[i], 1e-4 * std::max(1.0, std::fabs(want_lse[i]))) << "lse " << i;
    }
  }
}

TEST(EmulatedBackend, TensorCoreKernelsMatchTheReference) {
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    run_case({2, 100, 100, 2, 1, 64}, t);
    run_case({1, 100, 100, 2, 2, 64, true}, t);
    run_case({1, 20, 150, 2, 2, 128, true}, t);                     // Sq < Sk: bottom-right causal
    run_case({1, 150, 20, 2, 1, 32, true}, t);                      // Sq > Sk: the first rows see nothing
    run_case({1, 130, 130, 4, 2, 32, false, 17, 5}, t);             // a window
    run_case({1, 90, 90, 4, 4, 96, false, 3, 3, {1, 2, 3, 4}}, t);  // per-head dilation
    run_case({2, 140, 140, 2, 1, 64, false, 8, 8, {}, {0, 77, 139}}, t);  // global tokens
  }
}

TEST(EmulatedBackend, Float32KernelMatchesTheReference) {
  run_case({1, 70, 90, 3, 1, 40, true}, DType::kFloat32);
  run_case({1, 64, 64, 2, 2, 33, false, 5, 9, {2, 3}, {}}, DType::kFloat32);
  run_case({1, 64, 64, 2, 2, 16, false, 4, 4, {}, {3, 40}}, DType::kFloat32);
}

TEST(EmulatedBackend, UnsupportedHeadDimIsRefusedWithTheSupportedList) {
  std::vector<uint16_t> x(2 * 40, 0);
  AttentionParams p;
  p.device = Device::kCudaEmulator;
  p.dtype = DType::kFloat16;
  p.batch = p.seqlen_q = p.seqlen_k = p.heads_q = p.heads_k = 1;
  p.head_dim = p.head_dim_v = 40;
  p.q = p.k = p.v = x.data();
  p.out = x.data() + 40;
  p.q_stride = p.k_stride = p.v_stride = p.out_stride = {40, 40, 40};
  const Status st = attention_forward(p);
  EXPECT_EQ(st.code, StatusCode::kUnsupported);
  EXPECT_NE(st.message.find("head_dim == head_dim_v in {32, 64, 96, 128, 256}"), std::string::npos) << st.message;
}

}  // namespace
}  // namespace longattn

namespace longattn {
namespace {

// A paged KV-cache decode step through the C++ API, with appends, sinks, softcap and splits: the CPU backend against
// the CUDA backend on the emulator (the CPU side is checked against the float64 oracle in the Python suite).
TEST(EmulatedBackend, PagedKvCacheDecodeMatchesTheCpuBackend) {
  const int64_t B = 2, Hq = 8, Hk = 2, D = 64, page = 16, max_blocks = 8, n_blocks = B * max_blocks + 2;
  std::mt19937 rng(5);
  std::normal_distribution<float> dist;
  std::vector<uint16_t> cache_k(n_blocks * page * Hk * D), cache_v(cache_k.size()), q(B * Hq * D), kn(B * Hk * D),
      vn(B * Hk * D);
  for (auto* t : {&cache_k, &cache_v, &q, &kn, &vn})
    for (auto& x : *t) x = testing::to_bf16(dist(rng));
  std::vector<int32_t> table(B * max_blocks);
  for (int64_t i = 0; i < B * max_blocks; ++i) table[i] = int32_t((i * 7 + 3) % n_blocks);  // shuffled, distinct
  std::vector<int32_t> lens = {5, 100};
  std::vector<float> sinks = {0.5f, -1.0f, 0.0f, 2.0f, 1.0f, 0.0f, -0.5f, 3.0f};
  const auto run = [&](Device device, int splits, std::vector<uint16_t> kc, std::vector<uint16_t> vc,
                       std::vector<uint16_t>* out, std::vector<float>* lse, std::vector<uint16_t>* kc_after) {
    out->assign(B * Hq * D, 0);
    lse->assign(B * Hq, 0.0f);
    AttentionParams p;
    p.device = device;
    p.dtype = DType::kBFloat16;
    p.batch = B, p.seqlen_q = 1, p.heads_q = Hq, p.heads_k = Hk, p.head_dim = p.head_dim_v = D;
    p.seqlen_k = max_blocks * page;
    p.q = q.data(), p.k = kc.data(), p.v = vc.data(), p.out = out->data(), p.lse = lse->data();
    p.q_stride = p.out_stride = {Hq * D, Hq * D, D};
    p.k_stride = p.v_stride = {page * Hk * D, Hk * D, D};  // (num_blocks, page, Hk, D)
    p.lse_batch_stride = Hq, p.lse_head_stride = 1;
    p.scale = 0.125f, p.causal = true, p.softcap = 20.0f, p.sinks = sinks.data();
    p.cache_seqlens = lens.data(), p.block_table = table.data(), p.block_table_stride = max_blocks;
    p.max_blocks = max_blocks, p.num_blocks = n_blocks, p.page_size = page;
    p.k_new = kn.data(), p.v_new = vn.data(), p.seqlen_new = 1;
    p.k_new_stride = p.v_new_stride = {Hk * D, Hk * D, D};
    p.num_splits = splits;
    std::vector<uint8_t> ws(size_t(attention_workspace_bytes(p)));
    p.workspace = ws.empty() ? nullptr : ws.data(), p.workspace_bytes = int64_t(ws.size());
    const Status st = attention_forward(p);
    ASSERT_TRUE(st.ok()) << st.message;
    *kc_after = kc;
  };
  std::vector<uint16_t> out_cpu, out_emu, k_cpu, k_emu;
  std::vector<float> lse_cpu, lse_emu;
  run(Device::kCpu, 1, cache_k, cache_v, &out_cpu, &lse_cpu, &k_cpu);
  for (int splits : {1, 3}) {
    run(Device::kCudaEmulator, splits, cache_k, cache_v, &out_emu, &lse_emu, &k_emu);
    EXPECT_EQ(k_emu, k_cpu) << "the appended rows";
    for (size_t i = 0; i < out_cpu.size(); ++i) ASSERT_NEAR(testing::from_bf16(out_emu[i]), testing::from_bf16(out_cpu[i]), 3e-2) << i;
    for (size_t i = 0; i < lse_cpu.size(); ++i) ASSERT_NEAR(lse_emu[i], lse_cpu[i], 1e-3) << i;
  }
}

}  // namespace
}  // namespace longattn

namespace longattn {
namespace {

// LSH attention through the C++ API: the CUDA backend on the emulator against the CPU backend, same inputs and
// rotations. The buckets are the same bits (the hashing does the CPU's float32 operations in the CPU's order);
// float32 outputs agree to float32 rounding, bfloat16 ones to the rounding of P on the tensor cores.
TEST(EmulatedBackend, LshAttentionMatchesTheCpuBackend) {
  struct LshRun {
    DType dtype;
    int64_t seqlen, heads, head_dim, n_hashes, chunk, before, after;
    std::vector<int64_t> factors;  // empty: n_buckets = 8, one factor
    bool causal, padding;
  };
  const LshRun runs[] = {
      {DType::kFloat32, 256, 2, 48, 3, 32, 1, 0, {}, true, true},
      {DType::kFloat32, 40, 1, 16, 2, 64, 1, 0, {}, false, false},  // S <= chunk: one round, no hashing
      {DType::kBFloat16, 256, 2, 64, 2, 64, 1, 1, {4, 6}, false, true},
      {DType::kFloat16, 192, 1, 32, 4, 32, 2, 0, {}, true, false},
  };
  const CpuIsa saved = active_cpu_isa();
  if (!set_cpu_isa(CpuIsa::kAvx2).ok() && !set_cpu_isa(CpuIsa::kAvx512).ok())
    GTEST_SKIP() << "the CPU buckets to compare with come from a fused multiply-add (AVX2 or AVX-512) kernel";
  for (const LshRun& c : runs) {
    const int64_t B = 2, S = c.seqlen, H = c.heads, D = c.head_dim;
    const int64_t n_buckets = c.factors.empty() ? 8 : c.factors[0] * c.factors[1];
    const int64_t columns = c.factors.empty() ? 4 : (c.factors[0] + c.factors[1]) / 2;
    std::mt19937 rng(3);
    std::normal_distribution<float> dist;
    const bool f32 = c.dtype == DType::kFloat32;
    std::vector<float> qk(B * S * H * D), v(qk.size()), rot(H * D * c.n_hashes * columns);
    std::vector<uint16_t> qk16(qk.size()), v16(v.size());
    for (auto* t : {&qk, &v})
      for (size_t i = 0; i < t->size(); ++i) {
        float x = dist(rng);
        uint16_t& bits = (t == &qk ? qk16 : v16)[i];
        if (c.dtype == DType::kFloat16) bits = to_f16(x);
        if (c.dtype == DType::kBFloat16) bits = testing::to_bf16(x);
        (*t)[i] = x;
      }
    for (auto& x : rot) x = dist(rng);
    std::vector<uint8_t> mask(B * S, 1);
    if (c.padding)
      for (int64_t t = S - 7; t < S; ++t) mask[t] = 0;
    const auto run = [&](Device device, std::vector<float>* out32, std::vector<uint16_t>* out16,
                         std::vector<float>* lse, std::vector<int64_t>* buckets) {
      out32->assign(qk.size(), NAN);
      out16->assign(qk.size(), 0x7fff);
      lse->assign(B * H * S, NAN);
      buckets->assign(B * H * c.n_hashes * S, -1);
      LshAttentionParams p;
      p.device = device;
      p.dtype = c.dtype;
      p.qk = f32 ? static_cast<const void*>(qk.data()) : qk16.data();
      p.v = f32 ? static_cast<const void*>(v.data()) : v16.data();
      p.out = f32 ? static_cast<void*>(out32->data()) : out16->data();
      p.lse = lse->data();
      p.buckets_out = buckets->data();
      p.batch = B, p.seqlen = S, p.heads = H, p.head_dim = p.head_dim_v = D;
      p.qk_stride = p.v_stride = p.out_stride = {S * H * D, H * D, D};
      p.lse_batch_stride = H * S, p.lse_head_stride = S;
      p.n_hashes = c.n_hashes, p.n_buckets = n_buckets;
      if (!c.factors.empty()) p.bucket_factors = c.factors.data(), p.n_bucket_factors = int64_t(c.factors.size());
      p.chunk_length = c.chunk, p.chunks_before = c.before, p.chunks_after = c.after, p.causal = c.causal;
      p.rotations = rot.data();
      if (c.padding) p.key_padding_mask = mask.data(), p.mask_batch_stride = S, p.mask_seq_stride = 1;
      std::vector<uint8_t> ws(size_t(lsh_attention_workspace_bytes(p)));
      if (device == Device::kCudaEmulator) ASSERT_GT(ws.size(), 0u);
      p.workspace = ws.empty() ? nullptr : ws.data(), p.workspace_bytes = int64_t(ws.size());
      const Status st = lsh_attention_forward(p);
      ASSERT_TRUE(st.ok()) << st.message;
      if (device != Device::kCudaEmulator) return;
      // lse is optional: without it the same outputs, and nothing written through a null pointer (the memory
      // checker sees every store)
      std::vector<float> o32_again(out32->size(), NAN);
      std::vector<uint16_t> o16_again(out16->size(), 0x7fff);
      p.out = f32 ? static_cast<void*>(o32_again.data()) : o16_again.data();
      p.lse = nullptr;
      const Status again = lsh_attention_forward(p);
      ASSERT_TRUE(again.ok()) << again.message;
      EXPECT_TRUE(f32 ? o32_again == *out32 : o16_again == *out16) << "outputs without lse";
    };
    std::vector<float> out_cpu, out_emu, lse_cpu, lse_emu;
    std::vector<uint16_t> o16_cpu, o16_emu;
    std::vector<int64_t> b_cpu, b_emu;
    run(Device::kCpu, &out_cpu, &o16_cpu, &lse_cpu, &b_cpu);
    run(Device::kCudaEmulator, &out_emu, &o16_emu, &lse_emu, &b_emu);
    EXPECT_EQ(b_emu, b_cpu) << "buckets, S = " << S;
    const auto value = [&](const std::vector<float>& o32, const std::vector<uint16_t>& o16, size_t i) -> double {
      return f32 ? o32[i] : c.dtype == DType::kFloat16 ? from_f16(o16[i]) : testing::from_bf16(o16[i]);
    };
    const double tol = f32 ? 2e-5 : c.dtype == DType::kFloat16 ? 6e-3 : 4e-2;
    for (size_t i = 0; i < qk.size(); ++i)
      ASSERT_NEAR(value(out_emu, o16_emu, i), value(out_cpu, o16_cpu, i), tol) << "out " << i << ", S = " << S;
    for (size_t i = 0; i < lse_cpu.size(); ++i)
      ASSERT_NEAR(lse_emu[i], lse_cpu[i], 1e-4 * std::max(1.0f, std::fabs(lse_cpu[i]))) << "lse " << i;
  }
  set_cpu_isa(saved);
}

}  // namespace
}  // namespace longattn
