// Vector abstractions the CPU engine is written against. Each kernel translation unit defines exactly one of
// LONGATTN_ISA_SCALAR / LONGATTN_ISA_AVX2 / LONGATTN_ISA_AVX512 and is compiled with the matching flags, so the same
// engine source becomes three machine-code variants chosen at run time (see cpu_dispatch.cpp).
//
// Everything here lives in an ISA-named namespace: no inline function compiled with -mavx2 can be picked by the
// linker for the portable path.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(LONGATTN_ISA_AVX2) || defined(LONGATTN_ISA_AVX512)
#include <immintrin.h>
#endif

#if defined(LONGATTN_ISA_SCALAR)
#define LONGATTN_ISA_NAME scalar
#elif defined(LONGATTN_ISA_AVX2) && defined(LONGATTN_ISA_AMX_MODEL)
#define LONGATTN_ISA_NAME amx_model  // AVX2 with the AMX path on modelled tiles (amx.h): a test build, never chosen
#elif defined(LONGATTN_ISA_AVX2)
#define LONGATTN_ISA_NAME avx2
#elif defined(LONGATTN_ISA_AVX512) && defined(LONGATTN_ISA_AMX)
#define LONGATTN_ISA_NAME amx  // AVX-512 plus AMX-BF16 (and AMX-FP16 where present): bf16/fp16 tiles on AMX
#elif defined(LONGATTN_ISA_AVX512) && defined(LONGATTN_ISA_AVX512_BF16)
#define LONGATTN_ISA_NAME avx512_bf16  // AVX-512 plus VDPBF16PS: the float32 engine, and bf16 tiles for bf16 inputs
#elif defined(LONGATTN_ISA_AVX512)
#define LONGATTN_ISA_NAME avx512
#else
#error "define one of LONGATTN_ISA_SCALAR, LONGATTN_ISA_AVX2, LONGATTN_ISA_AVX512"
#endif

namespace longattn::cpu::LONGATTN_ISA_NAME {

// ---- scalar conversions (shared by every ISA for tails) --------------------------------------------------------
inline float f32_from_bits(uint32_t b) { float f; std::memcpy(&f, &b, 4); return f; }
inline uint32_t bits_from_f32(float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; }

inline float bf16_to_f32(uint16_t h) { return f32_from_bits(uint32_t(h) << 16); }
inline uint16_t f32_to_bf16(float f) {  // round to nearest even; NaN stays a (quiet) NaN
  uint32_t b = bits_from_f32(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return uint16_t((b >> 16) | 0x40u);
  b += 0x7fffu + ((b >> 16) & 1u);
  return uint16_t(b >> 16);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp == 0) {
    if (man == 0) return f32_from_bits(sign);
    float f = std::ldexp(float(man), -24);  // subnormal half
    return sign ? -f : f;
  }
  return f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
}
inline uint16_t f32_to_f16(float f) {  // round to nearest even
  const uint32_t b = bits_from_f32(f);
  const uint16_t sign = uint16_t((b >> 16) & 0x8000u);
  const uint32_t abs = b & 0x7fffffffu;
  if (abs > 0x7f800000u) return uint16_t(sign | 0x7e00u);         // NaN
  if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);        // overflow (>= 65520 rounds to inf)
  if (abs < 0x38800000u) {                                        // result is subnormal or zero
    const float a = f32_from_bits(abs);
    return uint16_t(sign | uint16_t(std::nearbyint(a * 16777216.0f)));  // units of 2^-24, ties to even
  }
  uint32_t m = abs + 0xfffu + ((abs >> 13) & 1u);  // round the 13 dropped bits to nearest even
  return uint16_t(sign | uint16_t((m - 0x38000000u) >> 13));
}

// 2^f on f in [-0.5, 0.5]: a degree-6 polynomial fitted for relative error (~1e-7 evaluated in float32).
constexpr float kExp2C0 = 1.0f, kExp2C1 = 0.693147182f, kExp2C2 = 0.240226462f, kExp2C3 = 0.0555032864f,
                kExp2C4 = 0.00961848907f, kExp2C5 = 0.00133999309f, kExp2C6 = 0.00015345811f;
// Below this, 2^x is flushed to 0 (it is < 2^-125 of the row maximum: invisible in a float32 sum).
constexpr float kExp2Min = -125.0f;
// tanh(x) = x + x^3 (c3 + x^2 (c5 + ...)) near 0: the Taylor coefficients -1/3, 2/15, -17/315, 62/2835,
// -1382/155925, 21844/6081075 (truncation error below 2e-9 for |x| < 0.4).
constexpr float kTanhC3 = -1.0f / 3.0f, kTanhC5 = 2.0f / 15.0f, kTanhC7 = -17.0f / 315.0f,
                kTanhC9 = 62.0f / 2835.0f, kTanhC11 = -1382.0f / 155925.0f, kTanhC13 = 21844.0f / 6081075.0f;
constexpr float kTanhLog2e = 1.4426950408889634f;

#if defined(LONGATTN_ISA_SCALAR)
struct Vec {
  static constexpr int kWidth = 1;
  using Reg = float;
  static Reg zero() { return 0.0f; }
  static Reg set1(float x) { return x; }
  static Reg load(const float* p) { return *p; }
  static void store(float* p, Reg x) { *p = x; }
  static Reg broadcast(const float* p) { return *p; }
  // {p[0], p[stride], p[2*stride], ...}
  static Reg gather(const float* p, int32_t) { return *p; }
  static Reg fmadd(Reg a, Reg b, Reg c) { return a * b + c; }
  static Reg mul(Reg a, Reg b) { return a * b; }
  static Reg add(Reg a, Reg b) { return a + b; }
  static Reg sub(Reg a, Reg b) { return a - b; }
  static Reg max(Reg a, Reg b) { return a > b ? a : b; }  // a NaN in b is dropped; NaN rows still end NaN via exp2
  static Reg min(Reg a, Reg b) { return a < b ? a : b; }
  // 2^x for x <= 0 (x = -inf gives 0); NaN in, NaN out.
  static Reg exp2(Reg x) {
    if (x != x) return x;
    if (x < kExp2Min) return 0.0f;
    const float n = std::nearbyint(x), f = x - n;
    float p = kExp2C6;
    p = p * f + kExp2C5; p = p * f + kExp2C4; p = p * f + kExp2C3;
    p = p * f + kExp2C2; p = p * f + kExp2C1; p = p * f + kExp2C0;
    return f32_from_bits(bits_from_f32(p) + (uint32_t(int32_t(n)) << 23));
  }
  static Reg tanh(Reg x) { return std::tanh(x); }
  // lane i of the result = the sum of the lanes of acc[i], i < kWidth
  static Reg sum_lanes(const Reg* acc) { return acc[0]; }
  // m == -inf (a row with no visible key yet) becomes 0 so that exp2(s - m) never computes -inf - -inf.
  static Reg finite_or_zero(Reg m) { return m == -INFINITY ? 0.0f : m; }
  // Lane-wise a < b (or a == b) ? if_true : if_false.
  static Reg select_lt(Reg a, Reg b, Reg if_true, Reg if_false) { return a < b ? if_true : if_false; }
  static Reg select_eq(Reg a, Reg b, Reg if_true, Reg if_false) { return a == b ? if_true : if_false; }
};
#endif

#if defined(LONGATTN_ISA_AVX2)
struct Vec {
  static constexpr int kWidth = 8;
  using Reg = __m256;
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg set1(float x) { return _mm256_set1_ps(x); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, Reg x) { _mm256_storeu_ps(p, x); }
  static Reg broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static Reg gather(const float* p, int32_t stride) {
    const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(stride));
    return _mm256_i32gather_ps(p, idx, 4);
  }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg sub(Reg a, Reg b) { return _mm256_sub_ps(a, b); }
  static Reg max(Reg a, Reg b) { return _mm256_max_ps(a, b); }
  static Reg min(Reg a, Reg b) { return _mm256_min_ps(a, b); }
  static Reg exp2(Reg x) {
    const Reg flushed = _mm256_cmp_ps(x, _mm256_set1_ps(kExp2Min), _CMP_LT_OQ);  // false for NaN
    x = _mm256_max_ps(_mm256_set1_ps(kExp2Min), x);  // max(c, NaN) returns NaN: NaN propagates
    const Reg n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const Reg f = _mm256_sub_ps(x, n);
    Reg p = _mm256_set1_ps(kExp2C6);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C5));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C4));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C3));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C2));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C1));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C0));
    const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    const Reg r = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
    return _mm256_andnot_ps(flushed, r);
  }
  // lane i of the result = the sum of the 8 lanes of acc[i]: a transpose-and-add tree (7 adds, 14 shuffles)
  static Reg sum_lanes(const Reg* a) {
    Reg v[4], w[2];
    for (int i = 0; i < 4; ++i)  // 128-bit lane L: [a2i0+a2i2, a2i+1 0+2, a2i 1+3, a2i+1 1+3] of its 4 elements
      v[i] = _mm256_add_ps(_mm256_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm256_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 2; ++i)  // 128-bit lane L: the partial sums of a4i .. a4i+3 over that lane
      w[i] = _mm256_add_ps(_mm256_shuffle_ps(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm256_shuffle_ps(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm256_add_ps(_mm256_permute2f128_ps(w[0], w[1], 0x20), _mm256_permute2f128_ps(w[0], w[1], 0x31));
  }
  // tanh (softcap): the Taylor series to x^13 below |x| = 0.4 (accurate near 0, where 1 - e cancels), else
  // (1 - e) / (1 + e) with e = 2^(-2 log2(e) |x|) <= 1, the sign of x restored; NaN in, NaN out.
  static Reg tanh(Reg x) {
    const Reg sign = _mm256_set1_ps(-0.0f);
    const Reg ax = _mm256_andnot_ps(sign, x);
    const Reg e = exp2(_mm256_mul_ps(_mm256_set1_ps(-2.0f * kTanhLog2e), ax));
    const Reg one = _mm256_set1_ps(1.0f);
    const Reg big = _mm256_or_ps(_mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e)), _mm256_and_ps(sign, x));
    const Reg x2 = _mm256_mul_ps(x, x);
    Reg p = _mm256_set1_ps(kTanhC13);
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kTanhC11));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kTanhC9));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kTanhC7));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kTanhC5));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kTanhC3));
    const Reg small = _mm256_fmadd_ps(_mm256_mul_ps(x, x2), p, x);
    return _mm256_blendv_ps(big, small, _mm256_cmp_ps(ax, _mm256_set1_ps(0.4f), _CMP_LT_OQ));
  }
  static Reg finite_or_zero(Reg m) {
    return _mm256_andnot_ps(_mm256_cmp_ps(m, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ), m);
  }
  // 8 half / bfloat16 values to float32
  static Reg select_lt(Reg a, Reg b, Reg if_true, Reg if_false) {
    return _mm256_blendv_ps(if_false, if_true, _mm256_cmp_ps(a, b, _CMP_LT_OQ));
  }
  static Reg select_eq(Reg a, Reg b, Reg if_true, Reg if_false) {
    return _mm256_blendv_ps(if_false, if_true, _mm256_cmp_ps(a, b, _CMP_EQ_OQ));
  }
  static Reg load_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
  static Reg load_bf16(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
  }
  static void store_f16(uint16_t* p, Reg x) {
    _mm_storeu_si128((__m128i*)p, _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};
#endif

#if defined(LONGATTN_ISA_AVX512)
struct Vec {
  static constexpr int kWidth = 16;
  using Reg = __m512;
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg set1(float x) { return _mm512_set1_ps(x); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, Reg x) { _mm512_storeu_ps(p, x); }
  static Reg broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static Reg gather(const float* p, int32_t stride) {
    const __m512i idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(stride));
    return _mm512_i32gather_ps(idx, p, 4);
  }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg sub(Reg a, Reg b) { return _mm512_sub_ps(a, b); }
  static Reg max(Reg a, Reg b) { return _mm512_max_ps(a, b); }
  static Reg min(Reg a, Reg b) { return _mm512_min_ps(a, b); }
  static Reg exp2(Reg x) {
    const __mmask16 kept = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExp2Min), _CMP_NLT_UQ);  // true for NaN
    x = _mm512_max_ps(_mm512_set1_ps(kExp2Min), x);
    const Reg n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const Reg f = _mm512_sub_ps(x, n);
    Reg p = _mm512_set1_ps(kExp2C6);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C5));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C1));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C0));
    const __m512i e = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23);
    const Reg r = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), e));
    return _mm512_maskz_mov_ps(kept, r);
  }
  // lane i of the result = the sum of the 16 lanes of acc[i]: a transpose-and-add tree (15 adds, 30 shuffles)
  static Reg sum_lanes(const Reg* a) {
    Reg v[8], w[4], x[2];
    for (int i = 0; i < 8; ++i)
      v[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; ++i)  // 128-bit lane L: the partial sums of a4i .. a4i+3 over that lane
      w[i] = _mm512_add_ps(_mm512_shuffle_ps(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_ps(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int i = 0; i < 2; ++i)  // [w2i L0+L2, L1+L3, w2i+1 L0+L2, L1+L3]
      x[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(x[0], x[1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  // tanh (softcap): as the AVX2 version.
  static Reg tanh(Reg x) {
    const Reg ax = _mm512_abs_ps(x);
    const Reg e = exp2(_mm512_mul_ps(_mm512_set1_ps(-2.0f * kTanhLog2e), ax));
    const Reg one = _mm512_set1_ps(1.0f);
    const Reg big = _mm512_or_ps(_mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e)),
                                 _mm512_and_ps(_mm512_set1_ps(-0.0f), x));
    const Reg x2 = _mm512_mul_ps(x, x);
    Reg p = _mm512_set1_ps(kTanhC13);
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kTanhC11));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kTanhC9));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kTanhC7));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kTanhC5));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kTanhC3));
    const Reg small = _mm512_fmadd_ps(_mm512_mul_ps(x, x2), p, x);
    return _mm512_mask_mov_ps(big, _mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.4f), _CMP_LT_OQ), small);
  }
  static Reg finite_or_zero(Reg m) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(m, _mm512_set1_ps(-INFINITY), _CMP_NEQ_UQ), m);
  }
  static Reg select_lt(Reg a, Reg b, Reg if_true, Reg if_false) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), if_false, if_true);
  }
  static Reg select_eq(Reg a, Reg b, Reg if_true, Reg if_false) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ), if_false, if_true);
  }
  static Reg load_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
  static Reg load_bf16(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
  }
  static void store_f16(uint16_t* p, Reg x) {
    _mm256_storeu_si256((__m256i*)p, _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};
#endif

}  // namespace longattn::cpu::LONGATTN_ISA_NAME
