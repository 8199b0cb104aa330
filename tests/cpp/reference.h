// A naive double-precision attention for the C++ tests: materialises each score row, nothing clever.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <ostream>
#include <vector>

#include "longattn/longattn.h"

namespace longattn {

// GoogleTest prints parameters through PrintTo, found next to the type: an ISA by its name, not as a number.
inline void PrintTo(CpuIsa isa, std::ostream* os) { *os << cpu_isa_name(isa); }

}  // namespace longattn

namespace longattn::testing {

// Every CPU engine build; a test skips those this CPU or build cannot run.
inline const CpuIsa kEveryCpuIsa[] = {CpuIsa::kScalar,     CpuIsa::kAvx2, CpuIsa::kAvx512,
                                      CpuIsa::kAvx512Bf16, CpuIsa::kAmx,  CpuIsa::kAmxModel};

// bfloat16 bits from a float (round to nearest even; no NaN inputs) and back.
inline uint16_t to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float from_bf16(uint16_t h) {
  const uint32_t x = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// float16 bits from a float (round to nearest even; finite inputs well inside the float16 range) and back.
inline uint16_t to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (a < 6.103515625e-05f) return uint16_t(sign | uint16_t(std::nearbyint(a * 16777216.0f)));  // subnormal
  const uint32_t abs = x & 0x7fffffffu, m = abs + 0xfffu + ((abs >> 13) & 1u);
  return uint16_t(sign | uint16_t((m - 0x38000000u) >> 13));
}
inline float from_f16(uint16_t h) {
  const int exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  const float mag = exp == 0 ? std::ldexp(float(man), -24) : std::ldexp(float(man | 0x400), exp - 25);
  return h & 0x8000u ? -mag : mag;
}

// Contiguous BSHD float inputs; writes out (B, Sq, Hq, Dv) and lse (B, Hq, Sq).
inline void naive_attention(const AttentionParams& p, const std::vector<float>& q, const std::vector<float>& k,
                            const std::vector<float>& v, std::vector<double>* out, std::vector<double>* lse) {
  const int64_t B = p.batch, Sq = p.seqlen_q, Sk = p.seqlen_k, Hq = p.heads_q, Hk = p.heads_k;
  const int64_t D = p.head_dim, Dv = p.head_dim_v;
  // docs/semantics.md written out, independent of the engine's policy objects.
  const int64_t left = p.window_left, right = p.causal ? 0 : p.window_right;
  const auto visible = [&](int64_t b, int64_t h, int64_t i, int64_t j) {
    if (p.global_tokens && (p.global_tokens[b * p.global_batch_stride + j * p.global_seq_stride] ||
                            p.global_tokens[b * p.global_batch_stride + i * p.global_seq_stride]))
      return true;
    const int64_t dil = p.dilation ? p.dilation[h] : 1, pos = i + Sk - Sq;
    return (j - pos) % dil == 0 && (left < 0 || j >= pos - left * dil) && (right < 0 || j <= pos + right * dil);
  };
  out->assign(B * Sq * Hq * Dv, 0.0);
  lse->assign(B * Hq * Sq, -std::numeric_limits<double>::infinity());
  std::vector<double> s(Sk);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hk = h / (Hq / Hk);
      for (int64_t i = 0; i < Sq; ++i) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < Sk; ++j) {
          const bool vis = visible(b, h, i, j);
          double dot = 0;
          for (int64_t d = 0; d < D; ++d)
            dot += double(q[((b * Sq + i) * Hq + h) * D + d]) * double(k[((b * Sk + j) * Hk + hk) * D + d]);
          s[j] = vis ? dot * p.scale : -INFINITY;
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
