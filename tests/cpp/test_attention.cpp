#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "longattn/longattn.h"
#include "reference.h"

namespace longattn {
namespace {

struct Case {
  int64_t batch, seqlen_q, seqlen_k, heads_q, heads_k, head_dim, head_dim_v;
  bool causal;
  int64_t left = -1, right = -1;
  std::vector<int64_t> dilation = {};                  // per query head; empty = 1
  std::vector<std::pair<int64_t, int64_t>> global = {};  // (batch, position) of each global token
};

// A readable name for a case: its test name, and what GoogleTest prints for GetParam() (not a byte dump).
std::string describe(const Case& c) {
  std::string name = "b" + std::to_string(c.batch) + "_sq" + std::to_string(c.seqlen_q) + "_sk" +
                     std::to_string(c.seqlen_k) + "_h" + std::to_string(c.heads_q) + "x" + std::to_string(c.heads_k) +
                     "_d" + std::to_string(c.head_dim) + "x" + std::to_string(c.head_dim_v) +
                     (c.causal ? "_causal" : "");
  if (c.left >= 0 || c.right >= 0) name += "_win" + std::to_string(c.left + 1) + "_" + std::to_string(c.right + 1);
  if (!c.dilation.empty()) name += "_dil" + std::to_string(c.dilation.back());
  if (!c.global.empty()) name += "_global" + std::to_string(c.global.size());
  return name;
}

void PrintTo(const Case& c, std::ostream* os) { *os << describe(c); }

struct Inputs {
  std::vector<float> q, k, v;
  std::vector<uint8_t> global;  // (batch, seqlen_k) bytes, empty = none
};

Inputs random_inputs(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Inputs in;
  in.q.resize(c.batch * c.seqlen_q * c.heads_q * c.head_dim);
  in.k.resize(c.batch * c.seqlen_k * c.heads_k * c.head_dim);
  in.v.resize(c.batch * c.seqlen_k * c.heads_k * c.head_dim_v);
  for (auto* t : {&in.q, &in.k, &in.v})
    for (auto& x : *t) x = dist(rng);
  if (!c.global.empty()) {
    in.global.assign(c.batch * c.seqlen_k, 0);
    for (const auto& [b, pos] : c.global) in.global[b * c.seqlen_k + pos] = 1;
  }
  return in;
}

AttentionParams make_params(const Case& c, const Inputs& in, std::vector<float>* out, std::vector<float>* lse) {
  AttentionParams p;
  p.batch = c.batch;
  p.seqlen_q = c.seqlen_q;
  p.seqlen_k = c.seqlen_k;
  p.heads_q = c.heads_q;
  p.heads_k = c.heads_k;
  p.head_dim = c.head_dim;
  p.head_dim_v = c.head_dim_v;
  p.causal = c.causal;
  p.window_left = c.left;
  p.window_right = c.right;
  p.scale = 1.0f / std::sqrt(float(c.head_dim));
  p.q = in.q.data();
  p.k = in.k.data();
  p.v = in.v.data();
  out->assign(c.batch * c.seqlen_q * c.heads_q * c.head_dim_v, NAN);
  lse->assign(c.batch * c.heads_q * c.seqlen_q, NAN);
  p.out = out->data();
  p.lse = lse->data();
  p.q_stride = {c.seqlen_q * c.heads_q * c.head_dim, c.heads_q * c.head_dim, c.head_dim};
  p.k_stride = {c.seqlen_k * c.heads_k * c.head_dim, c.heads_k * c.head_dim, c.head_dim};
  p.v_stride = {c.seqlen_k * c.heads_k * c.head_dim_v, c.heads_k * c.head_dim_v, c.head_dim_v};
  p.out_stride = {c.seqlen_q * c.heads_q * c.head_dim_v, c.heads_q * c.head_dim_v, c.head_dim_v};
  p.lse_batch_stride = c.heads_q * c.seqlen_q;
  p.lse_head_stride = c.seqlen_q;
  p.dilation = c.dilation.empty() ? nullptr : c.dilation.data();
  if (!in.global.empty()) {
    p.global_tokens = in.global.data();
    p.global_batch_stride = c.seqlen_k;
    p.global_seq_stride = 1;
  }
  return p;
}

class IsaGuard {
 public:
  explicit IsaGuard(CpuIsa isa) : saved_(active_cpu_isa()) { ok_ = set_cpu_isa(isa).ok(); }
  ~IsaGuard() { set_cpu_isa(saved_); }
  bool ok() const { return ok_; }

 private:
  CpuIsa saved_;
  bool ok_ = false;
};

void expect_matches_reference(const Case& c, CpuIsa isa) {
  IsaGuard guard(isa);
  if (!guard.ok()) GTEST_SKIP() << cpu_isa_name(isa) << " is not available on this CPU";
  const Inputs in = random_inputs(c, 1234);
  std::vector<float> out, lse;
  const AttentionParams p = make_params(c, in, &out, &lse);
  ASSERT_TRUE(attention_forward(p).ok());
  std::vector<double> ref_out, ref_lse;
  testing::naive_attention(p, in.q, in.k, in.v, &ref_out, &ref_lse);
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref_out[i], 2e-5) << "out element " << i;
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(ref_lse[i])) ASSERT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << "lse element " << i;
    else ASSERT_NEAR(lse[i], ref_lse[i], 2e-5 * (1 + std::fabs(ref_lse[i]))) << "lse element " << i;
  }
}

const Case kCases[] = {
    {1, 1, 1, 1, 1, 1, 1, false},          {2, 37, 53, 4, 2, 16, 16, false},     {1, 130, 300, 2, 1, 64, 64, false},
    {1, 130, 300, 2, 1, 64, 64, true},     {1, 300, 130, 2, 2, 32, 48, true},    {1, 65, 65, 3, 1, 80, 24, true},
    {1, 200, 520, 1, 1, 128, 128, false},  {1, 64, 64, 1, 1, 256, 256, true},    {1, 100, 100, 2, 1, 7, 5, false},
    {1, 257, 257, 1, 1, 64, 64, false, 40, 3}, {1, 90, 150, 1, 1, 16, 16, false, 0, 0},
    {1, 300, 100, 1, 1, 16, 16, false, 5, -1},
    {1, 400, 400, 6, 2, 64, 64, false, 20, 11},  // 3 query heads packed per kv head: band tiles start at odd keys
    // dilation: per head, Sq != Sk both ways, causal, larger than the sequence
    {1, 150, 150, 2, 1, 32, 32, false, 3, 3, {1, 3}},
    {2, 100, 170, 2, 2, 16, 16, false, 4, 2, {2, 5}},
    {1, 170, 100, 2, 1, 16, 16, false, 70, -1, {2, 3}},
    {1, 200, 200, 1, 1, 24, 24, true, 5, 0, {3}},
    {1, 90, 90, 2, 2, 8, 8, false, -1, 1, {1000, 7}},
    // global tokens: edges and middle, different per batch, many (more than a key tile), with dilation and causal
    {2, 200, 200, 2, 1, 32, 32, false, 8, 8, {}, {{0, 0}, {0, 77}, {0, 199}, {1, 100}}},
    {1, 300, 300, 2, 2, 16, 16, true, 6, 0, {1, 2}, {{0, 5}, {0, 150}, {0, 151}, {0, 290}}},
    {1, 256, 256, 1, 1, 64, 64, false, -1, -1, {}, {{0, 3}, {0, 200}}},
    {1, 130, 130, 1, 1, 16, 16, false, 2, 2, {3}, {{0, 0}, {0, 3}, {0, 6}, {0, 9}, {0, 12}, {0, 15}, {0, 18},
                                                   {0, 21}, {0, 24}, {0, 27}, {0, 30}, {0, 33}, {0, 36}, {0, 39},
                                                   {0, 42}, {0, 45}, {0, 48}, {0, 51}, {0, 54}, {0, 57}, {0, 60},
                                                   {0, 63}, {0, 66}, {0, 69}, {0, 72}, {0, 75}, {0, 78}, {0, 81},
                                                   {0, 84}, {0, 87}, {0, 90}, {0, 93}, {0, 96}, {0, 99}, {0, 102},
                                                   {0, 105}, {0, 108}, {0, 111}, {0, 114}, {0, 117}, {0, 120},
                                                   {0, 123}, {0, 126}, {0, 129}, {0, 1}, {0, 2}, {0, 4}, {0, 5},
                                                   {0, 7}, {0, 8}, {0, 10}, {0, 11}, {0, 13}, {0, 14}, {0, 16},
                                                   {0, 17}, {0, 19}, {0, 20}, {0, 22}, {0, 23}, {0, 25}, {0, 26},
                                                   {0, 28}, {0, 29}, {0, 31}, {0, 32}, {0, 34}, {0, 35}, {0, 37}}},
};

class AttentionVsReference : public ::testing::TestWithParam<std::tuple<Case, CpuIsa>> {};

TEST_P(AttentionVsReference, MatchesNaiveDouble) {
  expect_matches_reference(std::get<0>(GetParam()), std::get<1>(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(Sweep, AttentionVsReference,
                         ::testing::Combine(::testing::ValuesIn(kCases),
                                            ::testing::ValuesIn(testing::kEveryCpuIsa)),
                         [](const ::testing::TestParamInfo<std::tuple<Case, CpuIsa>>& info) {
                           return std::string(cpu_isa_name(std::get<1>(info.param))) + "_" +
                                  describe(std::get<0>(info.param)) + "_" + std::to_string(info.index);
                         });

// 16-bit inputs on every ISA, against the naive double reference of the same (rounded) inputs. The float32
// engines round only the output (<= 2^-9 relative for bfloat16, 2^-11 for float16); the 16-bit tiles (avx512_bf16's
// bfloat16 pairs, amx's and amx_model's AMX tiles) also round P to the input dtype before P·V (<= 2^-9 relative
// per weight, so <= 2^-9 · Σ|p v| <= 2^-9 · max|v| ~ 8e-3 here; float16 a quarter of that); a wrong pairing of
// 16-bit values moves an output by O(1).
void expect_16_bit_matches_reference(const Case& c, CpuIsa isa, DType dtype) {
  IsaGuard guard(isa);
  if (!guard.ok()) GTEST_SKIP() << cpu_isa_name(isa) << " is not available on this CPU";
  const bool bf16 = dtype == DType::kBFloat16;
  const auto to16 = [&](float x) { return bf16 ? testing::to_bf16(x) : testing::to_f16(x); };
  const auto from16 = [&](uint16_t h) { return bf16 ? testing::from_bf16(h) : testing::from_f16(h); };
  Inputs in = random_inputs(c, 99);
  std::vector<uint16_t> q16, k16, v16;
  for (auto [t, bits] : {std::pair{&in.q, &q16}, std::pair{&in.k, &k16}, std::pair{&in.v, &v16}})
    for (float& x : *t) {
      bits->push_back(to16(x));
      x = from16(bits->back());  // the reference sees the rounded inputs
    }
  std::vector<float> out32, lse;
  AttentionParams p = make_params(c, in, &out32, &lse);
  std::vector<uint16_t> out(out32.size(), bf16 ? 0x7fc0 : 0x7e00);  // NaN
  p.dtype = dtype;
  p.q = q16.data(), p.k = k16.data(), p.v = v16.data(), p.out = out.data();
  ASSERT_TRUE(attention_forward(p).ok());
  std::vector<double> ref_out, ref_lse;
  p.dtype = DType::kFloat32;  // the reference reads the float copies
  p.q = in.q.data(), p.k = in.k.data(), p.v = in.v.data();
  testing::naive_attention(p, in.q, in.k, in.v, &ref_out, &ref_lse);
  const double tol = bf16 ? 1.5e-2 : 4e-3;
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(from16(out[i]), ref_out[i], tol) << "out element " << i;
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(ref_lse[i])) ASSERT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << "lse element " << i;
    else ASSERT_NEAR(lse[i], ref_lse[i], 1e-4 * (1 + std::fabs(ref_lse[i]))) << "lse element " << i;
  }
}

class BFloat16VsReference : public ::testing::TestWithParam<std::tuple<Case, CpuIsa>> {};
TEST_P(BFloat16VsReference, MatchesNaiveDouble) {
  expect_16_bit_matches_reference(std::get<0>(GetParam()), std::get<1>(GetParam()), DType::kBFloat16);
}
class Float16VsReference : public ::testing::TestWithParam<std::tuple<Case, CpuIsa>> {};
TEST_P(Float16VsReference, MatchesNaiveDouble) {
  expect_16_bit_matches_reference(std::get<0>(GetParam()), std::get<1>(GetParam()), DType::kFloat16);
}

const auto kCaseIsaName = [](const ::testing::TestParamInfo<std::tuple<Case, CpuIsa>>& info) {
  return std::string(cpu_isa_name(std::get<1>(info.param))) + "_" + describe(std::get<0>(info.param)) + "_" +
         std::to_string(info.index);
};
INSTANTIATE_TEST_SUITE_P(Sweep, BFloat16VsReference,
                         ::testing::Combine(::testing::ValuesIn(kCases), ::testing::ValuesIn(testing::kEveryCpuIsa)),
                         kCaseIsaName);
INSTANTIATE_TEST_SUITE_P(Sweep, Float16VsReference,
                         ::testing::Combine(::testing::ValuesIn(kCases), ::testing::ValuesIn(testing::kEveryCpuIsa)),
                         kCaseIsaName);

TEST(Attention, BitwiseIdenticalAcrossThreadCounts) {
  const Case c{2, 333, 333, 4, 2, 64, 64, true};
  const Inputs in = random_inputs(c, 7);
  std::vector<float> out1, lse1, out2, lse2;
  const int saved = num_threads();
  ASSERT_TRUE(set_num_threads(1).ok());
  ASSERT_TRUE(attention_forward(make_params(c, in, &out1, &lse1)).ok());
  ASSERT_TRUE(set_num_threads(3).ok());
  ASSERT_TRUE(attention_forward(make_params(c, in, &out2, &lse2)).ok());
  ASSERT_TRUE(set_num_threads(saved).ok());
  EXPECT_EQ(0, std::memcmp(out1.data(), out2.data(), out1.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(lse1.data(), lse2.data(), lse1.size() * sizeof(float)));
}

TEST(Attention, EmptyRowsGiveZeroAndMinusInf) {
  // Sq > Sk with causal bottom-right alignment: the first Sq - Sk queries see no key.
  const Case c{1, 20, 5, 1, 1, 8, 8, true};
  const Inputs in = random_inputs(c, 3);
  std::vector<float> out, lse;
  ASSERT_TRUE(attention_forward(make_params(c, in, &out, &lse)).ok());
  for (int i = 0; i < 15; ++i) {
    EXPECT_TRUE(std::isinf(lse[i]) && lse[i] < 0);
    for (int d = 0; d < 8; ++d) EXPECT_EQ(out[i * 8 + d], 0.0f);
  }
  EXPECT_TRUE(std::isfinite(lse[15]));
}

TEST(Attention, RejectsBadParams) {
  const Case c{1, 4, 4, 3, 2, 8, 8, false};
  const Inputs in = random_inputs(c, 1);
  std::vector<float> out, lse;
  AttentionParams p = make_params(c, in, &out, &lse);
  EXPECT_EQ(attention_forward(p).code, StatusCode::kInvalidArgument);  // 3 % 2 != 0
  p.heads_q = 2;
  p.head_dim = 300;
  EXPECT_EQ(attention_forward(p).code, StatusCode::kUnsupported);
  p.head_dim = 8;
  p.scale = NAN;
  EXPECT_EQ(attention_forward(p).code, StatusCode::kInvalidArgument);
  p.scale = 1.0f;
  p.causal = true;
  p.window_right = 2;
  EXPECT_EQ(attention_forward(p).code, StatusCode::kInvalidArgument);
  p.window_right = -1;
  p.window_left = -2;
  EXPECT_EQ(attention_forward(p).code, StatusCode::kInvalidArgument);
  p.window_left = 3;
  const int64_t dilation[2] = {1, 0};
  p.dilation = dilation;
  EXPECT_EQ(attention_forward(p).code, StatusCode::kInvalidArgument);
  p.dilation = nullptr;
  const uint8_t global[5] = {1, 0, 0, 0, 0};
  p.global_tokens = global;
  p.global_seq_stride = 1;
  p.seqlen_k = 5;  // global tokens need seqlen_q == seqlen_k
  EXPECT_EQ(attention_forward(p).code, StatusCode::kInvalidArgument);
  p.seqlen_k = 4;
  p.global_tokens = nullptr;
  p.q = nullptr;
  EXPECT_EQ(attention_forward(p).code, StatusCode::kInvalidArgument);
  p.q = in.q.data();
  p.out = nullptr;
  EXPECT_EQ(attention_forward(p).code, StatusCode::kInvalidArgument);
  p.batch = 0;  // empty: nothing to write, so no buffer needed
  EXPECT_TRUE(attention_forward(p).ok());
}

TEST(Attention, RejectsNegativeStridesNamingThem) {
  const Case c{1, 4, 4, 2, 2, 8, 8, false};
  const Inputs in = random_inputs(c, 1);
  std::vector<float> out, lse;
  AttentionParams p = make_params(c, in, &out, &lse);
  ASSERT_TRUE(attention_forward(p).ok());
  p.k_stride.seq = -p.k_stride.seq;  // a reversed view: would read before k's first row
  Status st = attention_forward(p);
  EXPECT_EQ(st.code, StatusCode::kInvalidArgument);
  EXPECT_NE(st.message.find("k_stride.seq"), std::string::npos) << st.message;
  p.k_stride.seq = -p.k_stride.seq;
  p.lse_head_stride = -1;
  st = attention_forward(p);
  EXPECT_EQ(st.code, StatusCode::kInvalidArgument);
  EXPECT_NE(st.message.find("lse_head_stride"), std::string::npos) << st.message;
}

TEST(Attention, NoKeysWritesZeroAndMinusInf) {
  const Case c{2, 9, 0, 2, 1, 8, 8, false};
  const Inputs in = random_inputs(c, 5);
  std::vector<float> out, lse;
  AttentionParams p = make_params(c, in, &out, &lse);
  p.k = nullptr;  // seqlen_k = 0: k and v are never read
  p.v = nullptr;
  ASSERT_TRUE(attention_forward(p).ok());
  for (float x : out) EXPECT_EQ(x, 0.0f);
  for (float x : lse) EXPECT_TRUE(std::isinf(x) && x < 0);
}

TEST(Attention, HalfAndBFloat16MatchFloat32Math) {
  const Case c{1, 70, 90, 2, 1, 64, 40, false};
  const Inputs in = random_inputs(c, 11);
  std::vector<float> out32, lse32;
  AttentionParams p32 = make_params(c, in, &out32, &lse32);
  ASSERT_TRUE(attention_forward(p32).ok());
  for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
    // Round the float inputs to dt, run both, compare against the float32 run on the rounded inputs.
    auto to16 = [&](const std::vector<float>& x, std::vector<uint16_t>* h, std::vector<float>* back) {
      h->resize(x.size());
      back->resize(x.size());
      for (size_t i = 0; i < x.size(); ++i) {
        uint32_t b;
        std::memcpy(&b, &x[i], 4);
        if (dt == DType::kBFloat16) {
          b += 0x7fffu + ((b >> 16) & 1u);
          (*h)[i] = uint16_t(b >> 16);
          const uint32_t w = uint32_t((*h)[i]) << 16;
          std::memcpy(&(*back)[i], &w, 4);
        } else {
          const _Float16 f = _Float16(x[i]);
          std::memcpy(&(*h)[i], &f, 2);
          (*back)[i] = float(f);
        }
      }
    };
    Inputs rounded;
    std::vector<uint16_t> q16, k16, v16;
    to16(in.q, &q16, &rounded.q);
    to16(in.k, &k16, &rounded.k);
    to16(in.v, &v16, &rounded.v);
    std::vector<float> out_ref, lse_ref;
    ASSERT_TRUE(attention_forward(make_params(c, rounded, &out_ref, &lse_ref)).ok());
    std::vector<uint16_t> out16(out_ref.size());
    std::vector<float> out_unused, lse16;
    AttentionParams p = make_params(c, rounded, &out_unused, &lse16);
    p.dtype = dt;
    p.q = q16.data();
    p.k = k16.data();
    p.v = v16.data();
    p.out = out16.data();
    ASSERT_TRUE(attention_forward(p).ok());
    const float tol = dt == DType::kBFloat16 ? 8e-3f : 1e-3f;  // one rounding of the output to dt
    for (size_t i = 0; i < out16.size(); ++i) {
      float got;
      if (dt == DType::kBFloat16) {
        const uint32_t w = uint32_t(out16[i]) << 16;
        std::memcpy(&got, &w, 4);
      } else {
        _Float16 f;
        std::memcpy(&f, &out16[i], 2);
        got = float(f);
      }
      ASSERT_NEAR(got, out_ref[i], tol * (1 + std::fabs(out_ref[i]))) << "element " << i;
    }
    for (size_t i = 0; i < lse16.size(); ++i) ASSERT_FLOAT_EQ(lse16[i], lse_ref[i]);
  }
}

}  // namespace
}  // namespace longattn
