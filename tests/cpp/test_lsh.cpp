// lsh_attention_forward through the C++ API against a naive double-precision implementation written from
// the spec: std::stable_sort for the bucket sort, explicit loops for the chunks, masks and round combination.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "longattn/longattn.h"
#include "reference.h"

namespace longattn {
namespace {

struct LshCase {
  int64_t batch, seqlen, heads, head_dim, head_dim_v, n_hashes, n_buckets, chunk, before, after;
  bool causal, padding;
};

// A readable name for a case: its test name, and what GoogleTest prints for GetParam() (not a byte dump).
std::string describe(const LshCase& c) {
  return "b" + std::to_string(c.batch) + "_s" + std::to_string(c.seqlen) + "_h" + std::to_string(c.heads) + "_d" +
         std::to_string(c.head_dim) + "x" + std::to_string(c.head_dim_v) + "_hashes" + std::to_string(c.n_hashes) +
         "_buckets" + std::to_string(c.n_buckets) + "_chunk" + std::to_string(c.chunk) + "_" +
         std::to_string(c.before) + "back" + std::to_string(c.after) + "ahead" + (c.causal ? "_causal" : "") +
         (c.padding ? "_padding" : "");
}

void PrintTo(const LshCase& c, std::ostream* os) { *os << describe(c); }

struct LshData {
  std::vector<float> qk, v, rotations;
  std::vector<uint8_t> mask;
};

LshData make_data(const LshCase& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  LshData d;
  d.qk.resize(c.batch * c.seqlen * c.heads * c.head_dim);
  d.v.resize(c.batch * c.seqlen * c.heads * c.head_dim_v);
  d.rotations.resize(c.heads * c.head_dim * c.n_hashes * c.n_buckets / 2);
  for (auto* t : {&d.qk, &d.v, &d.rotations})
    for (auto& x : *t) x = dist(rng);
  d.mask.assign(c.batch * c.seqlen, 1);
  if (c.padding)
    for (int64_t t = c.seqlen - 5; t < c.seqlen; ++t) d.mask[t] = 0;  // batch 0 ends with padding
  return d;
}

LshAttentionParams make_params(const LshCase& c, const LshData& d, std::vector<float>* out, std::vector<float>* lse,
                               std::vector<int64_t>* buckets) {
  LshAttentionParams p;
  p.qk = d.qk.data();
  p.v = d.v.data();
  out->assign(c.batch * c.seqlen * c.heads * c.head_dim_v, NAN);
  lse->assign(c.batch * c.heads * c.seqlen, NAN);
  buckets->assign(c.batch * c.heads * c.n_hashes * c.seqlen, -7);
  p.out = out->data();
  p.lse = lse->data();
  p.buckets_out = buckets->data();
  p.batch = c.batch;
  p.seqlen = c.seqlen;
  p.heads = c.heads;
  p.head_dim = c.head_dim;
  p.head_dim_v = c.head_dim_v;
  p.qk_stride = {c.seqlen * c.heads * c.head_dim, c.heads * c.head_dim, c.head_dim};
  p.v_stride = {c.seqlen * c.heads * c.head_dim_v, c.heads * c.head_dim_v, c.head_dim_v};
  p.out_stride = p.v_stride;
  p.lse_batch_stride = c.heads * c.seqlen;
  p.lse_head_stride = c.seqlen;
  p.n_hashes = c.n_hashes;
  p.n_buckets = c.n_buckets;
  p.chunk_length = c.chunk;
  p.chunks_before = c.before;
  p.chunks_after = c.after;
  p.causal = c.causal;
  p.rotations = d.rotations.data();
  if (c.padding) {
    p.key_padding_mask = d.mask.data();
    p.mask_batch_stride = c.seqlen;
    p.mask_seq_stride = 1;
  }
  return p;
}

// The spec, step by step, in double precision, for the buckets the kernel reports (hashing is checked apart).
void naive_lsh(const LshCase& c, const LshData& d, const std::vector<int64_t>& buckets, std::vector<double>* out,
               std::vector<double>* lse) {
  const int64_t S = c.seqlen, H = c.heads, D = c.head_dim, Dv = c.head_dim_v;
  const bool chunked = S > c.chunk;
  const int64_t R = chunked ? c.n_hashes : 1, L = chunked ? c.chunk : S;
  const int64_t before = chunked ? c.before : 0, after = chunked ? c.after : 0;
  out->assign(c.batch * S * H * Dv, 0.0);
  lse->assign(c.batch * H * S, 0.0);
  const auto qk = [&](int64_t b, int64_t t, int64_t h, int64_t e) { return double(d.qk[((b * S + t) * H + h) * D + e]); };
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::vector<int64_t> order(R * S);  // item = r * S + t
      std::iota(order.begin(), order.end(), 0);
      if (chunked)
        std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
          const int64_t rx = x / S, ry = y / S;
          const int64_t bx = buckets[((b * H + h) * c.n_hashes + rx) * S + x % S];
          const int64_t by = buckets[((b * H + h) * c.n_hashes + ry) * S + y % S];
          return rx != ry ? rx < ry : bx < by;  // stable: equal (round, bucket) keep ascending position
        });
      const int64_t n_chunks = R * S / L;
      std::vector<double> o_items(R * S * Dv), lse_items(R * S);
      for (int64_t ch = 0; ch < n_chunks; ++ch)
        for (int64_t qi = ch * L; qi < (ch + 1) * L; ++qi) {
          const int64_t tq = order[qi] % S;
          std::vector<double> s;
          std::vector<int64_t> keys;
          for (int64_t a = -before; a <= after; ++a) {
            const int64_t ca = ((ch + a) % n_chunks + n_chunks) % n_chunks;
            for (int64_t ki = ca * L; ki < (ca + 1) * L; ++ki) {
              const int64_t tk = order[ki] % S;
              double sum_sq = 0, dot = 0;
              for (int64_t e = 0; e < D; ++e) sum_sq += qk(b, tk, h, e) * qk(b, tk, h, e);
              const double norm = 1.0 / std::sqrt(sum_sq / double(D) + 1e-6) / std::sqrt(double(D));
              for (int64_t e = 0; e < D; ++e) dot += qk(b, tq, h, e) * qk(b, tk, h, e) * norm;
              if (!d.mask[b * S + tk] || (c.causal && tk > tq)) dot = -1e9;
              if (tk == tq) dot = -1e5;
              s.push_back(dot);
              keys.push_back(tk);
            }
          }
          const double mx = *std::max_element(s.begin(), s.end());
          double sum = 0;
          for (double x : s) sum += std::exp(x - mx);
          lse_items[order[qi]] = mx + std::log(sum);
          for (int64_t e = 0; e < Dv; ++e) {
            double acc = 0;
            for (size_t j = 0; j < s.size(); ++j)
              acc += std::exp(s[j] - mx) / sum * double(d.v[((b * S + keys[j]) * H + h) * Dv + e]);
            o_items[order[qi] * Dv + e] = acc;
          }
        }
      for (int64_t t = 0; t < S; ++t) {
        double mx = -INFINITY, sum = 0;
        for (int64_t r = 0; r < R; ++r) mx = std::max(mx, lse_items[r * S + t]);
        for (int64_t r = 0; r < R; ++r) sum += std::exp(lse_items[r * S + t] - mx);
        (*lse)[(b * H + h) * S + t] = mx + std::log(sum);
        for (int64_t r = 0; r < R; ++r)
          for (int64_t e = 0; e < Dv; ++e)
            (*out)[((b * S + t) * H + h) * Dv + e] += std::exp(lse_items[r * S + t] - mx) / sum * o_items[(r * S + t) * Dv + e];
      }
    }
}

class LshVsNaive : public ::testing::TestWithParam<std::tuple<LshCase, CpuIsa>> {};

TEST_P(LshVsNaive, MatchesSpec) {
  const LshCase& c = std::get<0>(GetParam());
  const CpuIsa saved = active_cpu_isa();
  if (!set_cpu_isa(std::get<1>(GetParam())).ok()) GTEST_SKIP() << "ISA not available on this CPU";
  const LshData d = make_data(c, 99);
  std::vector<float> out, lse;
  std::vector<int64_t> buckets;
  const Status st = lsh_attention_forward(make_params(c, d, &out, &lse, &buckets));
  set_cpu_isa(saved);
  ASSERT_TRUE(st.ok()) << st.message;

  // Hashing: every bucket is the argmax of concat(xR, -xR) up to float32 rounding of near ties.
  const int64_t S = c.seqlen, H = c.heads, D = c.head_dim, half = c.n_buckets / 2;
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t r = 0; r < c.n_hashes; ++r)
        for (int64_t t = 0; t < S; ++t) {
          const int64_t got = buckets[((b * H + h) * c.n_hashes + r) * S + t];
          if (c.padding && !d.mask[b * S + t]) {
            ASSERT_EQ(got, c.n_buckets);
            continue;
          }
          std::vector<double> proj(2 * half);
          for (int64_t j = 0; j < half; ++j) {
            double x = 0;
            for (int64_t e = 0; e < D; ++e)
              x += double(d.qk[((b * S + t) * H + h) * D + e]) * double(d.rotations[((h * D + e) * c.n_hashes + r) * half + j]);
            proj[j] = x;
            proj[half + j] = -x;
          }
          ASSERT_GE(got, 0);
          ASSERT_LT(got, c.n_buckets);
          const double best = *std::max_element(proj.begin(), proj.end());
          ASSERT_NEAR(proj[got], best, 1e-4 * (1 + std::fabs(best))) << "bucket of token " << t;
        }

  std::vector<double> ref_out, ref_lse;
  naive_lsh(c, d, buckets, &ref_out, &ref_lse);
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref_out[i], 3e-5) << "out element " << i;
  for (size_t i = 0; i < lse.size(); ++i)
    ASSERT_NEAR(lse[i], ref_lse[i], 2e-6 * (1 + std::fabs(ref_lse[i]))) << "lse element " << i;
}

const LshCase kLshCases[] = {
    {1, 128, 2, 16, 16, 1, 4, 32, 1, 0, false, false},  {2, 256, 2, 32, 24, 3, 8, 32, 1, 0, true, false},
    {1, 192, 1, 64, 64, 2, 16, 64, 1, 1, false, true},  {1, 96, 2, 8, 8, 4, 6, 16, 2, 1, true, true},
    {1, 40, 2, 16, 16, 2, 4, 64, 1, 0, true, false},    {1, 64, 1, 16, 16, 2, 2, 32, 3, 3, false, false},
    {1, 160, 2, 7, 5, 2, 10, 80, 1, 0, false, true},
};

INSTANTIATE_TEST_SUITE_P(Sweep, LshVsNaive,
                         ::testing::Combine(::testing::ValuesIn(kLshCases),
                                            ::testing::ValuesIn(testing::kEveryCpuIsa)),
                         [](const ::testing::TestParamInfo<std::tuple<LshCase, CpuIsa>>& info) {
                           return std::string(cpu_isa_name(std::get<1>(info.param))) + "_" +
                                  describe(std::get<0>(info.param)) + "_" + std::to_string(info.index);
                         });

// Factorized buckets (bucket_factors {4, 6}, 24 buckets): each bucket's factor digits are the argmax of that factor's
// own rotation columns; padding gets 24; the attention over those buckets is the spec's.
TEST(Lsh, FactorizedBucketsAreDigitsOfPerFactorArgmaxes) {
  const LshCase c{1, 128, 2, 16, 16, 2, 24, 32, 1, 0, false, true};
  const int64_t factors[] = {4, 6}, columns = 2 + 3;
  LshData d = make_data(c, 5);
  std::mt19937 rng(6);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  d.rotations.resize(c.heads * c.head_dim * c.n_hashes * columns);
  for (auto& x : d.rotations) x = dist(rng);
  const CpuIsa saved = active_cpu_isa();
  for (CpuIsa isa : testing::kEveryCpuIsa) {
    if (!set_cpu_isa(isa).ok()) continue;  // not on this CPU
    std::vector<float> out, lse;
    std::vector<int64_t> buckets;
    LshAttentionParams p = make_params(c, d, &out, &lse, &buckets);
    p.bucket_factors = factors;
    p.n_bucket_factors = 2;
    const Status st = lsh_attention_forward(p);
    ASSERT_TRUE(st.ok()) << st.message;
    const int64_t S = c.seqlen, H = c.heads, D = c.head_dim;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t r = 0; r < c.n_hashes; ++r)
        for (int64_t t = 0; t < S; ++t) {
          const int64_t got = buckets[(h * c.n_hashes + r) * S + t];
          if (!d.mask[t]) {
            ASSERT_EQ(got, 24) << cpu_isa_name(isa);
            continue;
          }
          ASSERT_GE(got, 0);
          ASSERT_LT(got, 24);
          int64_t rest = got, column0 = 0;
          for (int64_t f : factors) {
            std::vector<double> proj(f);
            for (int64_t j = 0; j < f / 2; ++j) {
              double x = 0;
              for (int64_t e = 0; e < D; ++e)
                x += double(d.qk[(t * H + h) * D + e]) *
                     double(d.rotations[((h * D + e) * c.n_hashes + r) * columns + column0 + j]);
              proj[j] = x;
              proj[f / 2 + j] = -x;
            }
            const double best = *std::max_element(proj.begin(), proj.end());
            ASSERT_NEAR(proj[rest % f], best, 1e-4 * (1 + std::fabs(best)))
                << cpu_isa_name(isa) << ": factor " << f << " of token " << t;
            rest /= f;
            column0 += f / 2;
          }
        }
    std::vector<double> ref_out, ref_lse;
    naive_lsh(c, d, buckets, &ref_out, &ref_lse);
    for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref_out[i], 3e-5) << "out element " << i;
  }
  set_cpu_isa(saved);
}

TEST(Lsh, RejectsBadParams) {
  const LshCase c{1, 64, 1, 8, 8, 1, 4, 32, 1, 0, false, false};
  const LshData d = make_data(c, 1);
  std::vector<float> out, lse;
  std::vector<int64_t> buckets;
  LshAttentionParams p = make_params(c, d, &out, &lse, &buckets);
  p.n_buckets = 5;
  EXPECT_EQ(lsh_attention_forward(p).code, StatusCode::kInvalidArgument);
  p.n_buckets = 4;
  p.chunk_length = 48;  // 64 % 48 != 0
  EXPECT_EQ(lsh_attention_forward(p).code, StatusCode::kInvalidArgument);
  p.chunk_length = 32;
  p.n_hashes = 0;
  EXPECT_EQ(lsh_attention_forward(p).code, StatusCode::kInvalidArgument);
  p.n_hashes = 1;
  p.rotations = nullptr;
  EXPECT_EQ(lsh_attention_forward(p).code, StatusCode::kInvalidArgument);
  std::vector<int64_t> given(64, 2);
  given[10] = 5;  // > n_buckets
  p.buckets_in = given.data();
  EXPECT_EQ(lsh_attention_forward(p).code, StatusCode::kInvalidArgument);
  given[10] = 4;  // the padding bucket is accepted
  EXPECT_TRUE(lsh_attention_forward(p).ok());
  p.qk_stride.head = -p.qk_stride.head;  // negative strides are refused, by name
  Status st = lsh_attention_forward(p);
  EXPECT_EQ(st.code, StatusCode::kInvalidArgument);
  EXPECT_NE(st.message.find("qk_stride.head"), std::string::npos) << st.message;
  p.qk_stride.head = -p.qk_stride.head;
  const int64_t odd[] = {2, 3}, mismatch[] = {2, 4};  // a factor that is odd; factors whose product is not n_buckets
  p.bucket_factors = odd;
  p.n_bucket_factors = 2;
  st = lsh_attention_forward(p);
  EXPECT_EQ(st.code, StatusCode::kInvalidArgument);
  EXPECT_NE(st.message.find("bucket_factors[1]"), std::string::npos) << st.message;
  p.bucket_factors = mismatch;
  st = lsh_attention_forward(p);
  EXPECT_EQ(st.code, StatusCode::kInvalidArgument);
  EXPECT_NE(st.message.find("product is 8"), std::string::npos) << st.message;
}

}  // namespace
}  // namespace longattn
