// A naive double-precision attention for the C++ tests: materialises each score row, nothing clever.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "band_policy.h"
#include "longattn/longattn.h"

namespace longattn::testing {

// Contiguous BSHD float inputs; writes out (B, Sq, Hq, Dv) and lse (B, Hq, Sq).
inline void naive_attention(const AttentionParams& p, const std::vector<float>& q, const std::vector<float>& k,
                            const std::vector<float>& v, std::vector<double>* out, std::vector<double>* lse) {
  const int64_t B = p.batch, Sq = p.seqlen_q, Sk = p.seqlen_k, Hq = p.heads_q, Hk = p.heads_k;
  const int64_t D = p.head_dim, Dv = p.head_dim_v;
  const SlidingWindowPolicy policy(Sq, Sk, p.causal, p.window_left, p.window_right);
  out->assign(B * Sq * Hq * Dv, 0.0);
  lse->assign(B * Hq * Sq, -std::numeric_limits<double>::infinity());
  std::vector<double> s(Sk);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hk = h / (Hq / Hk);
      for (int64_t i = 0; i < Sq; ++i) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < Sk; ++j) {
          const bool visible = j >= policy.lo(i) && j <= policy.hi(i);
          double dot = 0;
          for (int64_t d = 0; d < D; ++d)
            dot += double(q[((b * Sq + i) * Hq + h) * D + d]) * double(k[((b * Sk + j) * Hk + hk) * D + d]);
          s[j] = visible ? dot * p.scale : -INFINITY;
          mx = std::max(mx, s[j]);
        }
        if (mx == -INFINITY) continue;
        double sum = 0;
        for (int64_t j = 0; j < Sk; ++j) sum += std::exp(s[j] - mx);
        (*lse)[(b * Hq + h) * Sq + i] = mx + std::log(sum);
        for (int64_t e = 0; e < Dv; ++e) {
          double acc = 0;
          for (int64_t j = 0; j < Sk; ++j)
            acc += std::exp(s[j] - mx) / sum * double(v[((b * Sk + j) * Hk + hk) * Dv + e]);
          (*out)[((b * Sq + i) * Hq + h) * Dv + e] = acc;
        }
      }
    }
}

}  // namespace longattn::testing
