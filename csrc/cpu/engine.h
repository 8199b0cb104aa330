// The CPU tiled online-softmax engine for dense attention; its iteration/mask policy
// makes it sliding-window attention too (docs/semantics.md).
//
// Included once per ISA after simd.h. One work item = (batch, query head, kSubTiles query tiles of kBlockQ rows).
// For each key tile of kBlockK keys that the policy says a query tile touches:
//
//   St = K · Qᵀ            St: (nk, kBlockQ), keys are rows, queries are columns   [micro-kernel, MR keys x NR queries]
//   mask St                only when the (query tile, key tile) block is not wholly visible
//   online softmax         column-wise: m, l, alpha per query, all vertical SIMD, no horizontal reductions
//   O = O·alpha + Pᵀᵀ · V  O: (kBlockQ, dv_pad)                                   [micro-kernel, MR queries x NR dims]
//
// Computing the transposed score tile is the layout trick of this engine: K is read in its natural (key, dim)
// layout, only the query tile is transposed (once per work item), the softmax statistics of a query live in one
// SIMD lane, and P is read by the PV micro-kernel with unit stride across queries. Scores are kept in log2 units
// (scale·log2(e) is folded into Q) so the exponential is a plain exp2.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "band_policy.h"
#include "longattn/longattn.h"
#include "lse_merge.h"
#include "simd.h"
#include "work_plan.h"

#if defined(LONGATTN_ISA_AMX) || defined(LONGATTN_ISA_AMX_MODEL)
#define LONGATTN_AMX_TILES 1
#if defined(LONGATTN_ISA_AMX)
#define LONGATTN_AMX_HARDWARE 1
#else
#define LONGATTN_AMX_MODEL 1
#endif
#include "amx.h"
#endif

namespace longattn::cpu::LONGATTN_ISA_NAME {

// Tile shape. The defaults were chosen by measurement on a 2-core Sapphire Rapids VM (see the issue notes); each can
// be overridden with -DLONGATTN_<NAME>=… for tuning experiments, or for the AVX2 build alone with
// -DLONGATTN_AVX2_<NAME>=… (the AVX-512 builds need kBlockK · kBlockQ >= 16 · 256 below).
//   kMR x kNV*kWidth  register block of both micro-kernels (kMR broadcast rows, kNV vectors of columns)
//   kBlockQ           queries per tile (columns of the transposed score tile)
//   kBlockK           keys per tile
//   kSubTiles         query tiles per work item, sharing each packed K/V tile
#if defined(LONGATTN_ISA_SCALAR)
constexpr int kMR = 4, kNV = 4;
#elif defined(LONGATTN_ISA_AVX2)
constexpr int kMR = 6, kNV = 2;  // 12 accumulators + 2 loads + 1 broadcast = 15 of 16 ymm registers
#else
#ifndef LONGATTN_AVX512_MR
#define LONGATTN_AVX512_MR 8
#endif
#ifndef LONGATTN_AVX512_NV
#define LONGATTN_AVX512_NV 2
#endif
constexpr int kMR = LONGATTN_AVX512_MR, kNV = LONGATTN_AVX512_NV;  // 16 accumulators of 32 zmm registers
#endif
#if defined(LONGATTN_ISA_AVX2) && defined(LONGATTN_AVX2_BLOCK_K)
#define LONGATTN_BLOCK_K LONGATTN_AVX2_BLOCK_K
#endif
#if defined(LONGATTN_ISA_AVX2) && defined(LONGATTN_AVX2_BLOCK_Q)
#define LONGATTN_BLOCK_Q LONGATTN_AVX2_BLOCK_Q
#endif
#if defined(LONGATTN_ISA_AVX2) && defined(LONGATTN_AVX2_SUB_TILES)
#define LONGATTN_SUB_TILES LONGATTN_AVX2_SUB_TILES
#endif
#ifndef LONGATTN_BLOCK_Q
#define LONGATTN_BLOCK_Q 64
#endif
#ifndef LONGATTN_BLOCK_K
#define LONGATTN_BLOCK_K 64
#endif
#ifndef LONGATTN_SUB_TILES
#define LONGATTN_SUB_TILES 8
#endif
constexpr int kNR = kNV * Vec::kWidth;
constexpr int kBlockQ = LONGATTN_BLOCK_Q;
constexpr int kBlockK = LONGATTN_BLOCK_K;
constexpr int kSubTiles = LONGATTN_SUB_TILES;
static_assert(kBlockQ % kNR == 0, "the query tile must be a whole number of micro-kernel columns");

// The micro-kernels are forced inline into their loops: compiled out of line, GCC 12 keeps the AVX2 accumulator
// array in memory and stores it every iteration (measured: ~35% slower).
#define LONGATTN_ALWAYS_INLINE inline __attribute__((always_inline))

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

constexpr float kLog2e = 1.4426950408889634f;  // scores are kept in log2 units: scale · log2(e) is folded into Q
constexpr float kLn2 = 0.6931471805599453f;

// A query group is kSubTiles query tiles of one view. Each K/V tile is converted and packed once and then met by
// every sub-tile of the group: the packing (a strided read of K and V) is paid once per kSubTiles * kBlockQ queries,
// while the per-sub-tile state (Qᵀ, O, m, l) stays small enough for L2. A work item is a run of consecutive
// groups (CallPlan); packed tiles are cached across them, so with a bounded band, where neighbouring groups share
// most of their keys, each key is packed about once per item.
constexpr int64_t kQueriesPerGroup = int64_t(kSubTiles) * kBlockQ;

// The tile cache holds up to kMaxCachedTiles packed K/V tiles, fewer for wide heads (about kTileCacheBytes).
constexpr int kMaxCachedTiles = 32;
constexpr int64_t kTileCacheBytes = int64_t(1) << 20;

// ---- tile layouts ----------------------------------------------------------------------------------------------
// Three layouts of the packed tiles, chosen per element type at compile time:
//   float32 tiles        every dtype on every ISA without a 16-bit path (inputs converted as tiles are packed)
//   bfloat16 pair tiles  kBf16Tiles: bfloat16 on AVX512-BF16 (VDPBF16PS; described below)
//   AMX tiles            kAmxTiles: bfloat16 and float16 on AMX (TDPBF16PS / TDPFP16PS; described with their
//                        micro-kernels), or on the AMX model of amx.h in the amx_model test build
#if defined(LONGATTN_AMX_TILES)
template <DType T> constexpr bool kAmxTiles = T == DType::kBFloat16 || T == DType::kFloat16;
#else
template <DType T> constexpr bool kAmxTiles = false;
#endif
#if defined(LONGATTN_ISA_AVX512_BF16) && !defined(LONGATTN_AMX_TILES)
template <DType T> constexpr bool kBf16Tiles = T == DType::kBFloat16;
#else
template <DType T> constexpr bool kBf16Tiles = false;
#endif
// Two 16-bit values per 32-bit tile element (the lower half the first).
template <DType T> constexpr bool kPairTiles = kBf16Tiles<T> || kAmxTiles<T>;
template <DType T> using TileElem = std::conditional_t<kPairTiles<T>, uint32_t, float>;

// AMX tiles: a K row holds whole tile rows of pairs (zero past the head dim); Vᵀ rows hold the pairs of a tile's
// keys and then a tile row of zeros, so a 16-pair load starting at any even key of the tile stays inside its row.
constexpr int64_t kAmxPairs = 16;
inline int64_t amx_k_row(int64_t D) { return round_up((D + 1) / 2, kAmxPairs); }
inline int64_t amx_vt_row(int64_t keys) { return round_up((keys + 1) / 2, 4) + kAmxPairs; }
// Tile elements per key row of a K tile.
template <DType T> inline int64_t k_row_of(int64_t D) {
  return kAmxTiles<T> ? amx_k_row(D) : kPairTiles<T> ? (D + 1) / 2 : D;
}
// Where (even) key j of a V tile starts: a row of V, a pair row, or (AMX, Vᵀ) a column of pairs.
template <DType T> inline int64_t v_offset_of(int64_t j, int64_t dv_pad) {
  return kAmxTiles<T> ? j / 2 : kPairTiles<T> ? j / 2 * dv_pad : j * dv_pad;
}

// Scratch floats one thread needs for `p` (the dispatcher allocates it, so no allocation happens in this file).
// Sizes cover every layout the build can use for p.dtype.
struct WorkspaceLayout {
  int64_t qt, o, m, l, st, alpha, pt, ot, kcache, vcache, kglobal, vglobal, total;
  int64_t qt_size, o_size;  // per sub-tile
  int64_t k_tile, v_tile;   // floats of one packed K / V tile
  int cached_tiles;
  explicit WorkspaceLayout(const AttentionParams& p) {
    const int64_t dv_pad = round_up(p.head_dim_v, kNR);
#if defined(LONGATTN_AMX_TILES)
    const bool amx = p.dtype != DType::kFloat32;
#else
    const bool amx = false;
#endif
    int64_t at = 0;
    auto take = [&](int64_t n) { const int64_t here = at; at += round_up(n, 16); return here; };
    qt_size = round_up(std::max(p.head_dim, amx ? amx_k_row(p.head_dim) : 0) * kBlockQ, 16);
    o_size = round_up(kBlockQ * dv_pad, 16);
    // AMX: 16 rows of slack after a K tile (a tile load from a tile's last keys reads up to 15 rows past them)
    k_tile = round_up(std::max(int64_t(kBlockK) * p.head_dim, amx ? (kBlockK + 16) * amx_k_row(p.head_dim) : 0), 16);
    v_tile = round_up(std::max(int64_t(kBlockK), amx ? amx_vt_row(kBlockK) : 0) * dv_pad, 16);
    cached_tiles = int(std::clamp<int64_t>(kTileCacheBytes / (4 * (k_tile + v_tile)), 2, kMaxCachedTiles));
    qt = take(kSubTiles * qt_size);            // Qᵀ (head_dim, kBlockQ) per sub-tile, scaled
    o = take(kSubTiles * o_size);              // O accumulator (kBlockQ, dv_pad) per sub-tile
    m = take(kSubTiles * kBlockQ);             // running max per query, log2 units
    l = take(kSubTiles * kBlockQ);             // running sum per query
    st = take(int64_t(kBlockK) * kBlockQ);     // Sᵀ then Pᵀ (kBlockK, kBlockQ)
    alpha = take(kBlockQ);                     // rescale factor of the current tile
    pt = take(int64_t(kBlockK) / 2 * kBlockQ + kBlockQ);  // pair tiles: Pᵀ as pairs of keys
    ot = take(amx ? o_size : 0);               // AMX: O as (kBlockQ, dv_pad) rows, from the Oᵀ accumulator
    kcache = take(cached_tiles * k_tile);      // K tiles as float32 (kBlockK, head_dim)
    vcache = take(cached_tiles * v_tile);      // V tiles as float32 (kBlockK, dv_pad), zero-padded columns
    kglobal = take(k_tile);                    // one tile of gathered global keys
    vglobal = take(v_tile);
    total = at;
  }
};

// ---- element conversion ------------------------------------------------------------------------------------------
template <DType T> struct Elem;
template <> struct Elem<DType::kFloat32> {
  using Storage = float;
  static float to_f32(float x) { return x; }
  static float from_f32(float x) { return x; }
};
template <> struct Elem<DType::kFloat16> {
  using Storage = uint16_t;
  static float to_f32(uint16_t x) { return f16_to_f32(x); }
  static uint16_t from_f32(float x) { return f32_to_f16(x); }
};
template <> struct Elem<DType::kBFloat16> {
  using Storage = uint16_t;
  static float to_f32(uint16_t x) { return bf16_to_f32(x); }
  static uint16_t from_f32(float x) { return f32_to_bf16(x); }
};

// dst[0:n] = float(src[0:n]) * mul
template <DType T>
inline void load_row_f32(const typename Elem<T>::Storage* src, int64_t n, float mul, float* dst) {
  int64_t i = 0;
#if !defined(LONGATTN_ISA_SCALAR)
  const typename Vec::Reg vm = Vec::set1(mul);
  for (; i + Vec::kWidth <= n; i += Vec::kWidth) {
    typename Vec::Reg x;
    if constexpr (T == DType::kFloat32) x = Vec::load(src + i);
    else if constexpr (T == DType::kFloat16) x = Vec::load_f16(src + i);
    else x = Vec::load_bf16(src + i);
    Vec::store(dst + i, Vec::mul(x, vm));
  }
#endif
  for (; i < n; ++i) dst[i] = Elem<T>::to_f32(src[i]) * mul;
}

// dst[0:n] = T(src[0:n] * mul)
template <DType T>
inline void store_row(const float* src, int64_t n, float mul, typename Elem<T>::Storage* dst) {
  int64_t i = 0;
#if !defined(LONGATTN_ISA_SCALAR)
  const typename Vec::Reg vm = Vec::set1(mul);
  for (; i + Vec::kWidth <= n; i += Vec::kWidth) {
    const typename Vec::Reg x = Vec::mul(Vec::load(src + i), vm);
    if constexpr (T == DType::kFloat32) Vec::store(dst + i, x);
    else if constexpr (T == DType::kFloat16) Vec::store_f16(dst + i, x);
    else {
      alignas(64) float tmp[Vec::kWidth];
      Vec::store(tmp, x);
      for (int t = 0; t < Vec::kWidth; ++t) dst[i + t] = f32_to_bf16(tmp[t]);
    }
  }
#endif
  for (; i < n; ++i) dst[i] = Elem<T>::from_f32(src[i] * mul);
}

// ---- micro-kernels -------------------------------------------------------------------------------------------------
// St[r, 0:kNR] = sum_d K[r, d] * Qt[d, 0:kNR]  for r < MR.
//   k  (MR, head_dim) row stride ldk;  qt (head_dim, kNR) row stride kBlockQ;  st (MR, kNR) row stride kBlockQ
template <int MR>
LONGATTN_ALWAYS_INLINE void qk_microkernel(const float* k, int64_t ldk, int64_t head_dim, const float* qt, float* st) {
  using Reg = typename Vec::Reg;
  Reg acc[MR][kNV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v) acc[r][v] = Vec::zero();
  for (int64_t d = 0; d < head_dim; ++d) {
    Reg b[kNV];
    for (int v = 0; v < kNV; ++v) b[v] = Vec::load(qt + d * kBlockQ + v * Vec::kWidth);
    for (int r = 0; r < MR; ++r) {
      const Reg a = Vec::broadcast(k + r * ldk + d);
      for (int v = 0; v < kNV; ++v) acc[r][v] = Vec::fmadd(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v) Vec::store(st + r * kBlockQ + v * Vec::kWidth, acc[r][v]);
}

// O[r, 0:kNR] = O[r, 0:kNR] * alpha[r] + sum_j Pt[j, r] * V[j, 0:kNR]  for r < MR.
//   pt (nk, MR) row stride kBlockQ;  v (nk, kNR) row stride ldv;  o (MR, kNR) row stride ldo
template <int MR>
LONGATTN_ALWAYS_INLINE void pv_microkernel(const float* pt, int64_t nk, const float* v, int64_t ldv, float* o, int64_t ldo,
                           const float* alpha) {
  using Reg = typename Vec::Reg;
  Reg acc[MR][kNV];
  for (int r = 0; r < MR; ++r) {
    const Reg a = Vec::broadcast(alpha + r);
    for (int c = 0; c < kNV; ++c) acc[r][c] = Vec::mul(Vec::load(o + r * ldo + c * Vec::kWidth), a);
  }
  for (int64_t j = 0; j < nk; ++j) {
    Reg b[kNV];
    for (int c = 0; c < kNV; ++c) b[c] = Vec::load(v + j * ldv + c * Vec::kWidth);
    for (int r = 0; r < MR; ++r) {
      const Reg a = Vec::broadcast(pt + j * kBlockQ + r);
      for (int c = 0; c < kNV; ++c) acc[r][c] = Vec::fmadd(a, b[c], acc[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < kNV; ++c) Vec::store(o + r * ldo + c * Vec::kWidth, acc[r][c]);
}

// Runs F<mr>::run(args...) for a run-time mr in 1..kMR: the tail of a tile that is not a whole number of kMR rows.
template <template <int> class F, int MR = 1, typename... Args>
inline void with_rows(int mr, Args... args) {
  if constexpr (MR <= kMR) {
    if (mr == MR) F<MR>::run(args...);
    else with_rows<F, MR + 1>(mr, args...);
  }
}
template <int MR> struct QkRows {
  static void run(const float* k, int64_t ldk, int64_t d, const float* qt, float* st) {
    qk_microkernel<MR>(k, ldk, d, qt, st);
  }
};
template <int MR> struct PvRows {
  static void run(const float* pt, int64_t nk, const float* v, int64_t ldv, float* o, int64_t ldo, const float* a) {
    pv_microkernel<MR>(pt, nk, v, ldv, o, ldo, a);
  }
};

// ---- bfloat16 tiles (AVX512-BF16) ---------------------------------------------------------------------------------
// With VDPBF16PS, bfloat16 inputs skip the float32 conversion: a 32-bit lane holds a pair of bfloat16 values and one
// instruction adds both products to a float32 accumulator, so both matrix products take half the instructions and
// the tiles half the bytes. Scores, softmax and O stay float32; P is rounded to bfloat16 before P·V, as
// FlashAttention does on GPUs. Tile layouts (uint32_t = one pair, the lower half the first value):
//   Qᵀ (ceil(D/2), kBlockQ)   pairs along the head dim, unscaled (the scale multiplies the float32 scores)
//   K  (nk, ceil(D/2))        the rows as stored, pairs along the head dim
//   V  (ceil(nk/2), dv_pad)   pairs of consecutive keys: lane c of pair row j2 is (V[2 j2][c], V[2 j2 + 1][c])
//   Pᵀ (ceil(nk/2), kBlockQ)  pairs of consecutive keys, like V
// The bodies exist in the AVX512-BF16 build only; other builds never instantiate them.
template <int MR>
void qk_bf16_microkernel(const uint32_t* k, int64_t ldk, int64_t d2, const uint32_t* qt, float* st, float scale);
template <int MR>
void pv_bf16_microkernel(const uint32_t* pt, int64_t nk2, const uint32_t* v, int64_t ldv, float* o, int64_t ldo,
                         const float* alpha);
template <class KAt, class VAt>
void pack_kv_tile_bf16(KAt k_at, VAt v_at, int64_t nk, int64_t D, int64_t Dv, int64_t dv_pad, uint32_t* kt,
                       uint32_t* vt);
inline void pack_p_bf16(const float* st, int64_t nk, int64_t nq_pad, uint32_t* pt);

#if defined(LONGATTN_ISA_AVX512_BF16)
// St[r, 0:kNR] = scale · Σ_d2 K[r, d2] · Qᵀ[d2, 0:kNR] (pair dot products)  for r < MR.
//   k (MR, d2) row stride ldk;  qt (d2, kNR) row stride kBlockQ;  st (MR, kNR) row stride kBlockQ
template <int MR>
LONGATTN_ALWAYS_INLINE void qk_bf16_microkernel(const uint32_t* k, int64_t ldk, int64_t d2, const uint32_t* qt,
                                                float* st, float scale) {
  __m512 acc[MR][kNV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t d = 0; d < d2; ++d) {
    __m512bh b[kNV];
    for (int v = 0; v < kNV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(qt + d * kBlockQ + v * 16);
    for (int r = 0; r < MR; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(int(k[r * ldk + d]));
      for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, b[v]);
    }
  }
  const __m512 s = _mm512_set1_ps(scale);
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v) _mm512_storeu_ps(st + r * kBlockQ + v * 16, _mm512_mul_ps(acc[r][v], s));
}

// O[r, 0:kNR] = O[r, 0:kNR] · alpha[r] + Σ_j2 Pᵀ[j2, r] · V[j2, 0:kNR] (pair dot products)  for r < MR.
//   pt (nk2, MR) row stride kBlockQ;  v (nk2, kNR) row stride ldv;  o (MR, kNR) row stride ldo
template <int MR>
LONGATTN_ALWAYS_INLINE void pv_bf16_microkernel(const uint32_t* pt, int64_t nk2, const uint32_t* v, int64_t ldv,
                                                float* o, int64_t ldo, const float* alpha) {
  __m512 acc[MR][kNV];
  for (int r = 0; r < MR; ++r) {
    const __m512 a = _mm512_set1_ps(alpha[r]);
    for (int c = 0; c < kNV; ++c) acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(o + r * ldo + c * 16), a);
  }
  for (int64_t j = 0; j < nk2; ++j) {
    __m512bh b[kNV];
    for (int c = 0; c < kNV; ++c) b[c] = (__m512bh)_mm512_loadu_si512(v + j * ldv + c * 16);
    for (int r = 0; r < MR; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(int(pt[j * kBlockQ + r]));
      for (int c = 0; c < kNV; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, b[c]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < kNV; ++c) _mm512_storeu_ps(o + r * ldo + c * 16, acc[r][c]);
}

// K rows copied as stored (an odd head dim gets a zero partner), V rows interleaved in pairs (a zero row partners an
// odd last key; columns past Dv are zero).
template <class KAt, class VAt>
void pack_kv_tile_bf16(KAt k_at, VAt v_at, int64_t nk, int64_t D, int64_t Dv, int64_t dv_pad, uint32_t* kt,
                       uint32_t* vt) {
  const int64_t d2 = (D + 1) / 2;
  for (int64_t j = 0; j < nk; ++j) {
    std::memcpy(kt + j * d2, k_at(j), size_t(D) * 2);
    if (D % 2) reinterpret_cast<uint16_t*>(kt + j * d2)[D] = 0;
  }
  for (int64_t j2 = 0; j2 < (nk + 1) / 2; ++j2) {
    const uint16_t* r0 = v_at(2 * j2);
    const uint16_t* r1 = 2 * j2 + 1 < nk ? v_at(2 * j2 + 1) : nullptr;
    uint32_t* out = vt + j2 * dv_pad;
    int64_t c = 0;
    for (; c + 16 <= Dv; c += 16) {
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0 + c)));
      const __m512i hi = r1 ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r1 + c)))
                            : _mm512_setzero_si512();
      _mm512_storeu_si512(out + c, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
    for (; c < Dv; ++c) out[c] = uint32_t(r0[c]) | uint32_t(r1 ? r1[c] : 0) << 16;
    for (; c < dv_pad; ++c) out[c] = 0;
  }
}

// Pᵀ pairs from the float32 P tile st (nk, kBlockQ), each value rounded to the nearest bfloat16 (ties to even; P is
// finite, in [0, 1]); an odd last key gets a zero partner.
inline void pack_p_bf16(const float* st, int64_t nk, int64_t nq_pad, uint32_t* pt) {
  const __m512i half = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
  const __m512i high = _mm512_set1_epi32(int(0xffff0000u));
  const auto round = [&](__m512i x) {  // x + 0x7fff + (bit 16 of x): the upper 16 bits are the rounded bfloat16
    return _mm512_add_epi32(x, _mm512_add_epi32(half, _mm512_and_si512(_mm512_srli_epi32(x, 16), one)));
  };
  for (int64_t j2 = 0; j2 < (nk + 1) / 2; ++j2) {
    const float* p0 = st + 2 * j2 * kBlockQ;
    const bool pair = 2 * j2 + 1 < nk;
    for (int64_t c = 0; c < nq_pad; c += 16) {
      const __m512i x0 = round(_mm512_castps_si512(_mm512_loadu_ps(p0 + c)));
      const __m512i x1 = pair ? round(_mm512_castps_si512(_mm512_loadu_ps(p0 + kBlockQ + c))) : _mm512_setzero_si512();
      _mm512_storeu_si512(pt + j2 * kBlockQ + c, _mm512_or_si512(_mm512_srli_epi32(x0, 16), _mm512_and_si512(x1, high)));
    }
  }
}
#endif

template <int MR> struct QkBf16Rows {
  static void run(const uint32_t* k, int64_t ldk, int64_t d2, const uint32_t* qt, float* st, float scale) {
    qk_bf16_microkernel<MR>(k, ldk, d2, qt, st, scale);
  }
};
template <int MR> struct PvBf16Rows {
  static void run(const uint32_t* pt, int64_t nk2, const uint32_t* v, int64_t ldv, float* o, int64_t ldo,
                  const float* a) {
    pv_bf16_microkernel<MR>(pt, nk2, v, ldv, o, ldo, a);
  }
};

// Qᵀ pairs of the query rows row_at(c), c < nq, as stored (bfloat16 or, for AMX, float16 too); columns
// nq .. nq_pad - 1 are zero, and so are pair rows ceil(D/2) .. pair_rows - 1 (AMX: up to a whole tile row).
template <class RowAt>
inline void pack_query_tile_bf16(RowAt row_at, int64_t nq, int64_t nq_pad, int64_t D, uint32_t* qt,
                                 int64_t pair_rows = -1) {
  const int64_t d2 = (D + 1) / 2;
  for (int64_t c = 0; c < nq_pad; ++c) {
    if (c >= nq) {
      for (int64_t d = 0; d < d2; ++d) qt[d * kBlockQ + c] = 0;
      continue;
    }
    const uint16_t* row = row_at(c);
    for (int64_t d = 0; d < D / 2; ++d) qt[d * kBlockQ + c] = uint32_t(row[2 * d]) | uint32_t(row[2 * d + 1]) << 16;
    if (D % 2) qt[(D / 2) * kBlockQ + c] = row[D - 1];
  }
  for (int64_t d = d2; d < pair_rows; ++d) std::fill(qt + d * kBlockQ, qt + d * kBlockQ + nq_pad, 0u);
}

// ---- AMX tiles (AMX-BF16 / AMX-FP16) ------------------------------------------------------------------------------
// With AMX one instruction multiplies a 16 x 32 tile of 16-bit values by a 32 x 16 one into 16 x 16 float32
// accumulators. Both products keep the engine's transposed orientation, so that neither needs a transpose per tile:
//   Sᵀ (keys, queries)  = K (keys, D) · Qᵀ (D, queries)        A = K rows, B = Qᵀ pairs (the pair-tile layouts)
//   Oᵀ (dv, queries)   += Vᵀ (dv, keys) · Pᵀ (keys, queries)   A = Vᵀ pairs (packed once per K/V tile),
//                                                               B = Pᵀ pairs (as the bfloat16 pair tiles pack P)
// so the softmax stays column-wise (one query per SIMD lane) and O is kept transposed, its rows rescaled by alpha
// with vertical SIMD; it is transposed back once per query tile, when the rows are finished. Tile layouts
// (uint32_t = one pair of bfloat16 or float16, the lower half the first value):
//   Qᵀ (amx_k_row(D), kBlockQ)   pairs along the head dim, zero past it
//   K  (nk + 16, amx_k_row(D))   the rows as stored, zero pairs past the head dim; the 16 rows of slack after the
//                                tile are read by a load from its last keys, and only feed score rows never used
//   Vᵀ (dv_pad, vt_row)          row e: (V[2 j2][e], V[2 j2 + 1][e]) for j2 < ceil(nk/2), then zeros
//   Pᵀ (k2, kBlockQ)             pairs of consecutive keys, zero rows up to k2 = a whole number of tile rows
// Scores and P are float32 as elsewhere; P is rounded to the input dtype before P·V.
#if defined(LONGATTN_AMX_TILES)
// K rows and Vᵀ pairs of one tile of nk keys (16-bit values, bfloat16 or float16: the packing only moves bits).
template <class KAt, class VAt>
void pack_kv_tile_amx(KAt k_at, VAt v_at, int64_t nk, int64_t D, int64_t Dv, int64_t dv_pad, int64_t k_row,
                      int64_t vt_row, uint32_t* kt, uint32_t* vt) {
  for (int64_t j = 0; j < nk; ++j) {
    uint32_t* row = kt + j * k_row;
    std::memcpy(row, k_at(j), size_t(D) * 2);
    std::memset(reinterpret_cast<uint16_t*>(row) + D, 0, size_t(2 * k_row - D) * 2);
  }
  const int64_t n2 = (nk + 1) / 2;
  for (int64_t j2 = 0; j2 < n2; ++j2) {
    const uint16_t* r0 = v_at(2 * j2);
    const uint16_t* r1 = 2 * j2 + 1 < nk ? v_at(2 * j2 + 1) : nullptr;
    for (int64_t e = 0; e < Dv; ++e) vt[e * vt_row + j2] = uint32_t(r0[e]) | uint32_t(r1 ? r1[e] : 0) << 16;
  }
  for (int64_t e = 0; e < dv_pad; ++e) std::fill(vt + e * vt_row + (e < Dv ? n2 : 0), vt + (e + 1) * vt_row, 0u);
}

// Pᵀ pairs from the float32 P tile st (nk, kBlockQ), each value rounded to the nearest bfloat16 / float16 (ties to
// even); an odd last key gets a zero partner, and pair rows ceil(nk/2) .. k2 - 1 are zero.
template <bool kFp16>
inline void pack_p_amx(const float* st, int64_t nk, int64_t nq_pad, int64_t k2, uint32_t* pt) {
  const int64_t n2 = (nk + 1) / 2;
#if defined(LONGATTN_AMX_HARDWARE)
  if constexpr (!kFp16) {
    pack_p_bf16(st, nk, nq_pad, pt);
  } else {
    for (int64_t j2 = 0; j2 < n2; ++j2) {
      const float* p0 = st + 2 * j2 * kBlockQ;
      const bool pair = 2 * j2 + 1 < nk;
      for (int64_t c = 0; c < nq_pad; c += 16) {
        const __m512i lo = _mm512_cvtepu16_epi32(_mm512_cvtps_ph(_mm512_loadu_ps(p0 + c), _MM_FROUND_TO_NEAREST_INT));
        const __m512i hi = pair ? _mm512_cvtepu16_epi32(_mm512_cvtps_ph(_mm512_loadu_ps(p0 + kBlockQ + c),
                                                                        _MM_FROUND_TO_NEAREST_INT))
                                : _mm512_setzero_si512();
        _mm512_storeu_si512(pt + j2 * kBlockQ + c, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
    }
  }
#else
  const auto round = [](float x) { return uint32_t(kFp16 ? f32_to_f16(x) : f32_to_bf16(x)); };
  for (int64_t j2 = 0; j2 < n2; ++j2) {
    const float* p0 = st + 2 * j2 * kBlockQ;
    const bool pair = 2 * j2 + 1 < nk;
    for (int64_t c = 0; c < nq_pad; ++c)
      pt[j2 * kBlockQ + c] = round(p0[c]) | (pair ? round(p0[kBlockQ + c]) : 0u) << 16;
  }
#endif
  for (int64_t j2 = n2; j2 < k2; ++j2) std::fill(pt + j2 * kBlockQ, pt + j2 * kBlockQ + nq_pad, 0u);
}

// C (16·NA, 16·NB) = [C +] A (16·NA, k2 pairs) · B (k2 pairs, 16·NB): one block of up to 2 x 2 C tiles.
//   a row stride lda elements;  b row stride ldb;  c row stride ldc floats;  k2 a multiple of 16
template <bool kFp16, int NA, int NB>
LONGATTN_ALWAYS_INLINE void amx_block(const uint32_t* a, int64_t lda, const uint32_t* b, int64_t ldb, int64_t k2,
                                      float* c, int64_t ldc, bool accumulate) {
  using namespace amx;
  const int64_t sa = lda * 4, sb = ldb * 4, sc = ldc * 4;
  const auto dot = [](auto tc, auto ta, auto tb) {
    constexpr int C = decltype(tc)::value, A = decltype(ta)::value, B = decltype(tb)::value;
    if constexpr (kFp16) dot_fp16<C, A, B>();
    else dot_bf16<C, A, B>();
  };
  using C00 = std::integral_constant<int, kC00>;
  using C01 = std::integral_constant<int, kC01>;
  using C10 = std::integral_constant<int, kC10>;
  using C11 = std::integral_constant<int, kC11>;
  using A0 = std::integral_constant<int, kA0>;
  using A1 = std::integral_constant<int, kA1>;
  using B0 = std::integral_constant<int, kB0>;
  using B1 = std::integral_constant<int, kB1>;
  if (accumulate) {
    load<kC00>(c, sc);
    if constexpr (NB == 2) load<kC01>(c + 16, sc);
    if constexpr (NA == 2) load<kC10>(c + 16 * ldc, sc);
    if constexpr (NA == 2 && NB == 2) load<kC11>(c + 16 * ldc + 16, sc);
  } else {
    zero<kC00>();
    if constexpr (NB == 2) zero<kC01>();
    if constexpr (NA == 2) zero<kC10>();
    if constexpr (NA == 2 && NB == 2) zero<kC11>();
  }
  for (int64_t kk = 0; kk < k2; kk += kAmxPairs) {
    load<kA0>(a + kk, sa);
    if constexpr (NA == 2) load<kA1>(a + 16 * lda + kk, sa);
    load<kB0>(b + kk * ldb, sb);
    if constexpr (NB == 2) load<kB1>(b + kk * ldb + 16, sb);
    dot(C00{}, A0{}, B0{});
    if constexpr (NB == 2) dot(C01{}, A0{}, B1{});
    if constexpr (NA == 2) dot(C10{}, A1{}, B0{});
    if constexpr (NA == 2 && NB == 2) dot(C11{}, A1{}, B1{});
  }
  store<kC00>(c, sc);
  if constexpr (NB == 2) store<kC01>(c + 16, sc);
  if constexpr (NA == 2) store<kC10>(c + 16 * ldc, sc);
  if constexpr (NA == 2 && NB == 2) store<kC11>(c + 16 * ldc + 16, sc);
}

// C (m, n) = [C +] A (m, k2) · B (k2, n) in blocks of 32 x 32; m, n, k2 multiples of 16. meets(i, rows, j, cols)
// false skips a block (its C is left as it was).
template <bool kFp16, class Meets>
inline void amx_product(const uint32_t* a, int64_t lda, int64_t m, const uint32_t* b, int64_t ldb, int64_t n,
                        int64_t k2, float* c, int64_t ldc, bool accumulate, Meets meets) {
  for (int64_t i = 0; i < m; i += 32) {
    const bool two_a = i + 16 < m;
    for (int64_t j = 0; j < n; j += 32) {
      const bool two_b = j + 16 < n;
      if (!meets(i, two_a ? 32 : 16, j, two_b ? 32 : 16)) continue;
      const uint32_t* ai = a + i * lda;
      float* cij = c + i * ldc + j;
      if (two_a && two_b) amx_block<kFp16, 2, 2>(ai, lda, b + j, ldb, k2, cij, ldc, accumulate);
      else if (two_a) amx_block<kFp16, 2, 1>(ai, lda, b + j, ldb, k2, cij, ldc, accumulate);
      else if (two_b) amx_block<kFp16, 1, 2>(ai, lda, b + j, ldb, k2, cij, ldc, accumulate);
      else amx_block<kFp16, 1, 1>(ai, lda, b + j, ldb, k2, cij, ldc, accumulate);
    }
  }
}
#endif

// O (nq, dv_pad) rows from the AMX accumulator Oᵀ (dv_pad, kBlockQ).
inline void transpose_o(const float* ot, int64_t nq, int64_t dv_pad, float* o) {
  for (int64_t e = 0; e < dv_pad; ++e)
    for (int64_t c = 0; c < nq; ++c) o[c * dv_pad + e] = ot[e * kBlockQ + c];
}

// ---- online softmax ------------------------------------------------------------------------------------------------
// One SIMD lane per query (column of St): m_new = max(m, max_j St[j]), alpha = 2^(m - m_new),
// P[j] = 2^(St[j] - m_new) written over St, l = l * alpha + sum_j P[j]. kSoftmaxCols vectors of columns are done
// together so the max and sum chains of different columns overlap instead of waiting on each other's latency.
constexpr int kSoftmaxCols = 4;

inline void online_softmax_update(float* st, int64_t nk, int64_t nq_pad, float* m, float* l, float* alpha) {
  using Reg = typename Vec::Reg;
  constexpr int W = Vec::kWidth;
  for (int64_t c = 0; c < nq_pad; c += kSoftmaxCols * W) {
    const int cols = int(std::min<int64_t>(kSoftmaxCols, (nq_pad - c) / W));
    Reg m_new[kSoftmaxCols], m_use[kSoftmaxCols], sum[kSoftmaxCols];
    for (int v = 0; v < kSoftmaxCols; ++v) m_new[v] = v < cols ? Vec::load(m + c + v * W) : Vec::zero();
    for (int64_t j = 0; j < nk; ++j)
      for (int v = 0; v < kSoftmaxCols; ++v)
        if (v < cols) m_new[v] = Vec::max(m_new[v], Vec::load(st + j * kBlockQ + c + v * W));
    for (int v = 0; v < kSoftmaxCols; ++v) {
      m_use[v] = Vec::finite_or_zero(m_new[v]);
      sum[v] = Vec::zero();
    }
    for (int64_t j = 0; j < nk; ++j)
      for (int v = 0; v < kSoftmaxCols; ++v)
        if (v < cols) {
          float* sj = st + j * kBlockQ + c + v * W;
          const Reg pj = Vec::exp2(Vec::sub(Vec::load(sj), m_use[v]));
          Vec::store(sj, pj);
          sum[v] = Vec::add(sum[v], pj);
        }
    for (int v = 0; v < cols; ++v) {
      const Reg a = Vec::exp2(Vec::sub(Vec::load(m + c + v * W), m_use[v]));
      Vec::store(l + c + v * W, Vec::fmadd(Vec::load(l + c + v * W), a, sum[v]));
      Vec::store(m + c + v * W, m_new[v]);
      Vec::store(alpha + c + v * W, a);
    }
  }
}

// Prefetch `bytes` from p into L2, one request per cache line.
inline void prefetch_row(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t at = 0; at < bytes; at += 64) __builtin_prefetch(c + at, 0, 2);
}


// ---- one work item -------------------------------------------------------------------------------------------------
// Qt[d, c] = Q[row(c), d] * qscale for c < nq; padded columns up to nq_pad are zero (finite scores, never written
// out). kWidth query rows at a time are converted into `rows` (kWidth, D), then each Qt row segment is one gather.
template <DType T, class RowAt>
inline void pack_query_tile(RowAt row_at, int64_t nq, int64_t nq_pad, int64_t D, float qscale, float* rows,
                            float* qt) {
  constexpr int W = Vec::kWidth;
  for (int64_t c0 = 0; c0 < nq_pad; c0 += W) {
    for (int r = 0; r < W; ++r) {
      float* row = rows + r * D;
      if (c0 + r < nq) load_row_f32<T>(row_at(c0 + r), D, qscale, row);
      else std::fill(row, row + D, 0.0f);
    }
    for (int64_t d = 0; d < D; ++d) Vec::store(qt + d * kBlockQ + c0, Vec::gather(rows + d, int32_t(D)));
  }
}

// K tile (nk, D) and V tile (nk, dv_pad) copied to contiguous float32 buffers, key j of the tile read from
// k_at(j) / v_at(j). Even for float32 inputs the copy pays: rows of a BSHD tensor sit heads*dim apart, a
// power-of-two stride whose cache lines fall into a handful of L1 sets, so reading them in place thrashes the
// cache the micro-kernels depend on.
template <DType T, class KAt, class VAt>
inline void pack_kv_tile(KAt k_at, VAt v_at, int64_t nk, int64_t D, int64_t Dv, int64_t dv_pad, float* kt,
                         float* vt) {
  for (int64_t j = 0; j < nk; ++j) {
    load_row_f32<T>(k_at(j), D, 1.0f, kt + j * D);
    load_row_f32<T>(v_at(j), Dv, 1.0f, vt + j * dv_pad);
    std::fill(vt + j * dv_pad + Dv, vt + (j + 1) * dv_pad, 0.0f);
  }
}

// The tiles of a work item for element type T: float32 (converted), bfloat16 pairs, or AMX tiles (engine tiles of
// kBlockK keys: Vᵀ rows of amx_vt_row(kBlockK) pairs).
template <DType T, class RowAt>
inline void pack_queries(RowAt row_at, int64_t nq, int64_t nq_pad, int64_t D, float qscale, float* rows,
                         TileElem<T>* qt) {
  if constexpr (kAmxTiles<T>) pack_query_tile_bf16(row_at, nq, nq_pad, D, qt, amx_k_row(D));
  else if constexpr (kBf16Tiles<T>) pack_query_tile_bf16(row_at, nq, nq_pad, D, qt);
  else pack_query_tile<T>(row_at, nq, nq_pad, D, qscale, rows, qt);
}
template <DType T, class KAt, class VAt>
inline void pack_keys_values(KAt k_at, VAt v_at, int64_t nk, int64_t D, int64_t Dv, int64_t dv_pad, TileElem<T>* kt,
                             TileElem<T>* vt) {
#if defined(LONGATTN_AMX_TILES)
  if constexpr (kAmxTiles<T>) {
    pack_kv_tile_amx(k_at, v_at, nk, D, Dv, dv_pad, amx_k_row(D), amx_vt_row(kBlockK), kt, vt);
    return;
  }
#endif
  if constexpr (kBf16Tiles<T>) pack_kv_tile_bf16(k_at, v_at, nk, D, Dv, dv_pad, kt, vt);
  else if constexpr (!kAmxTiles<T>) pack_kv_tile<T>(k_at, v_at, nk, D, Dv, dv_pad, kt, vt);
}

// Visible keys [lo[c], hi[c]) of each query column c of a block on a band edge, in block-local key indices; both
// ends grow with c. The micro-kernels skip the (key rows x query panel) and (query rows x keys) pieces that lie
// wholly outside: on the two edge tiles of a band this halves the work. Skipped scores are masked anyway, and a
// skipped P·V term is an exact zero, so the result bits do not change.
struct ColumnRanges {
  int32_t lo[kBlockQ], hi[kBlockQ];
};

// Scores of rows [0, nk) become softcap2 · tanh(score) (softcap2 > 0; else nothing happens).
inline void softcap_scores(float* st, int64_t nk, int64_t nq_pad, float softcap2) {
  if (softcap2 <= 0.0f) return;
  const typename Vec::Reg cap = Vec::set1(softcap2);
  for (int64_t jj = 0; jj < nk; ++jj)
    for (int64_t c = 0; c < nq_pad; c += Vec::kWidth) {
      float* x = st + jj * kBlockQ + c;
      Vec::store(x, Vec::mul(cap, Vec::tanh(Vec::load(x))));
    }
}

// One query tile (nq queries) meets nk keys of a packed K/V tile (kt, vt already offset to the first of them).
// mask_scores(st, nq_pad) sets the scores of hidden (key, query) pairs to -inf, or does nothing when the whole
// block is visible (the unmasked fast path). ranges: null, or the visible interval of each column (band edges).
// softcap2 > 0: the scores are softcap2 · tanh(K · Qᵀ) (Gemma 2's soft-capping, in log2 units; Q was packed with
// scale / softcap), applied before the mask.
// The tiles are those of T (TileElem<T>): float32 tiles (Q packed with its scale), or pair tiles (bfloat16 pairs,
// or AMX tiles), whose scores are multiplied by score_scale and whose P is packed into pt; kt then advances by
// k_row_of<T>(D) per key and vt starts on a key pair. AMX tiles: o is Oᵀ (dv_pad, kBlockQ) and vt_row the row
// stride of Vᵀ in pairs.
template <DType T, class MaskFn>
inline void attend_key_block(int64_t nq, int64_t nk, int64_t D, int64_t dv_pad, const TileElem<T>* kt,
                             const TileElem<T>* vt, const TileElem<T>* qt, float* st, float* o, float* m, float* l,
                             float* alpha, MaskFn mask_scores, const ColumnRanges* ranges, float softcap2 = 0.0f,
                             float score_scale = 1.0f, uint32_t* pt = nullptr, int64_t vt_row = 0) {
  constexpr bool bf16 = kBf16Tiles<T>;
  const int64_t nq_pad = round_up(nq, kNR), k_row = k_row_of<T>(D);
  if constexpr (kAmxTiles<T>) {
#if defined(LONGATTN_AMX_TILES)
    constexpr bool fp16 = T == DType::kFloat16;
    // Sᵀ = K · Qᵀ : (round_up(nk, 16), nq_pad), skipping 32 x 32 blocks wholly outside a band edge's ranges
    amx_product<fp16>(kt, k_row, round_up(nk, 16), qt, kBlockQ, nq_pad, k_row, st, kBlockQ, false,
                      [&](int64_t i, int64_t rows, int64_t j, int64_t cols) {
      if (!ranges) return true;
      const int64_t c_last = std::min<int64_t>(j + cols, nq) - 1;
      return j <= c_last && i < ranges->hi[c_last] && i + rows > ranges->lo[j];
    });
    const typename Vec::Reg scale = Vec::set1(score_scale);
    for (int64_t jj = 0; jj < nk; ++jj)
      for (int64_t c = 0; c < nq_pad; c += Vec::kWidth)
        Vec::store(st + jj * kBlockQ + c, Vec::mul(Vec::load(st + jj * kBlockQ + c), scale));
    softcap_scores(st, nk, nq_pad, softcap2);
    mask_scores(st, nq_pad);
    online_softmax_update(st, nk, nq_pad, m, l, alpha);
    const int64_t k2 = round_up((nk + 1) / 2, kAmxPairs);
    pack_p_amx<fp16>(st, nk, nq_pad, k2, pt);
    // Oᵀ = Oᵀ · alpha (per column) + Vᵀ · Pᵀ : (dv_pad, nq_pad). Keys outside a row's range have P = 0.
    for (int64_t e = 0; e < dv_pad; ++e)
      for (int64_t c = 0; c < nq_pad; c += Vec::kWidth)
        Vec::store(o + e * kBlockQ + c, Vec::mul(Vec::load(o + e * kBlockQ + c), Vec::load(alpha + c)));
    amx_product<fp16>(vt, vt_row, dv_pad, pt, kBlockQ, nq_pad, k2, o, kBlockQ, true,
                      [](int64_t, int64_t, int64_t, int64_t) { return true; });
#endif
  } else {
    (void)vt_row;
    // Key rows [j, j + rows) meet query panel c0 unless every column of the panel sees none of them.
    const auto rows_meet_panel = [&](int64_t j, int64_t rows, int64_t c0) {
      if (!ranges) return true;
      const int64_t c_last = std::min<int64_t>(c0 + kNR, nq) - 1;
      return c0 <= c_last && j < ranges->hi[c_last] && j + rows > ranges->lo[c0];
    };
    const auto qk_rows = [&](int rows, int64_t j, int64_t c0) {
      if constexpr (bf16) {
        if (rows == kMR) qk_bf16_microkernel<kMR>(kt + j * k_row, k_row, k_row, qt + c0, st + j * kBlockQ + c0, score_scale);
        else with_rows<QkBf16Rows>(rows, kt + j * k_row, k_row, k_row, qt + c0, st + j * kBlockQ + c0, score_scale);
      } else {
        if (rows == kMR) qk_microkernel<kMR>(kt + j * D, D, D, qt + c0, st + j * kBlockQ + c0);
        else with_rows<QkRows>(rows, kt + j * D, D, D, qt + c0, st + j * kBlockQ + c0);
      }
    };
    // St = K · Qᵀ : (nk, nq_pad). A block of kMR key rows stays in L1 while it meets every query panel.
    for (int64_t j = 0; j < nk; j += kMR) {
      const int rows = int(std::min<int64_t>(kMR, nk - j));
      for (int64_t c0 = 0; c0 < nq_pad; c0 += kNR)
        if (rows_meet_panel(j, rows, c0)) qk_rows(rows, j, c0);
    }

    softcap_scores(st, nk, nq_pad, softcap2);

    mask_scores(st, nq_pad);

    online_softmax_update(st, nk, nq_pad, m, l, alpha);
    if constexpr (bf16) pack_p_bf16(st, nk, nq_pad, pt);

    // O = O * alpha + P · V : (nq, dv_pad). Query rows [c, c + rows) need only keys [j_lo, j_hi) (bfloat16 tiles: the
    // key pairs covering them; a key outside has P = 0 exactly).
    for (int64_t n0 = 0; n0 < dv_pad; n0 += kNR) {
      for (int64_t c = 0; c < nq; c += kMR) {
        const int rows = int(std::min<int64_t>(kMR, nq - c));
        const int64_t j_lo = ranges ? ranges->lo[c] : 0;
        const int64_t j_hi = ranges ? std::max<int64_t>(j_lo, ranges->hi[c + rows - 1]) : nk;
        float* oc = o + c * dv_pad + n0;
        if constexpr (bf16) {
          const int64_t p_lo = j_lo / 2, p_hi = (j_hi + 1) / 2;
          const uint32_t* pp = pt + p_lo * kBlockQ + c;
          const uint32_t* v = vt + p_lo * dv_pad + n0;
          if (rows == kMR) pv_bf16_microkernel<kMR>(pp, p_hi - p_lo, v, dv_pad, oc, dv_pad, alpha + c);
          else with_rows<PvBf16Rows>(rows, pp, p_hi - p_lo, v, dv_pad, oc, dv_pad, alpha + c);
        } else {
          const float* pp = st + j_lo * kBlockQ + c;
          const float* v = vt + j_lo * dv_pad + n0;
          if (rows == kMR) pv_microkernel<kMR>(pp, j_hi - j_lo, v, dv_pad, oc, dv_pad, alpha + c);
          else with_rows<PvRows>(rows, pp, j_hi - j_lo, v, dv_pad, oc, dv_pad, alpha + c);
        }
      }
    }
  }
}

// Scores of (key, query) pairs outside the band become -inf: for key row jj (view key j0 + jj), only the
// queries of visible_queries() keep their score; with `inside` false it is the other way round (global keys:
// a query already met them in its window, and must count them once).
inline void mask_band(const SlidingWindowPolicy& band, int64_t u0, int64_t nq_pad, const int64_t* view_key,
                      int64_t nk, bool inside, float* st) {
  for (int64_t jj = 0; jj < nk; ++jj) {
    float* row = st + jj * kBlockQ;
    if (view_key[jj] < 0) {  // not in this residue class: the window never met it
      if (!inside) continue;
      std::fill(row, row + nq_pad, -INFINITY);
      continue;
    }
    int64_t q_first, q_last;
    band.visible_queries(view_key[jj], &q_first, &q_last);
    const int64_t c_first = std::clamp<int64_t>(q_first - u0, 0, nq_pad);
    const int64_t c_last = std::clamp<int64_t>(q_last - u0 + 1, c_first, nq_pad);
    if (inside) {
      std::fill(row, row + c_first, -INFINITY);
      std::fill(row + c_last, row + nq_pad, -INFINITY);
    } else {
      std::fill(row + c_first, row + c_last, -INFINITY);
    }
  }
}

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Key rows of one (sequence, key/value head): strided, or gathered through a paged KV cache's block table.
template <class S>
struct KeyRows {
  const S* base;          // row 0 (paged: the head's offset inside a block)
  int64_t seq_stride;     // between rows (paged: between the rows of one block)
  const int32_t* blocks;  // paged: the sequence's row of the block table, else null
  int64_t page, block_stride;
  const S* row(int64_t j) const {
    return blocks ? base + int64_t(blocks[j / page]) * block_stride + (j % page) * seq_stride : base + j * seq_stride;
  }
};

// Writes one finished query row: out = O / l, lse = ln(2) · (m + log2 l); with a sink the row's denominator gains
// e^sink (lse_merge_weights); a row with no visible key is exactly 0 with lse = -inf (or its sink). With key splits
// the normalised partial (o, lse) goes to the plan's scratch instead, for merge_split_partials.
template <DType T>
inline void finish_row(const AttentionParams& p, const float* o, float m, float l, const float* sink,
                       typename Elem<T>::Storage* out_row, float* lse_at, float* partial_o, float* partial_lse) {
  const int64_t Dv = p.head_dim_v;
  const float lse_part = l == 0.0f ? -INFINITY : kLn2 * (m + std::log2(l));
  if (partial_o) {
    if (l == 0.0f) std::fill(partial_o, partial_o + Dv, 0.0f);
    else for (int64_t e = 0; e < Dv; ++e) partial_o[e] = o[e] / l;
    *partial_lse = lse_part;
    return;
  }
  float weight = l == 0.0f ? 0.0f : 1.0f, lse = lse_part;
  if (sink) lse = lse_merge_weights(&lse_part, 1, true, *sink, [&](int, float w) { weight = w; });
  if (weight == 0.0f) {  // nothing visible (or drowned by the sink): exactly 0, whatever the tiles put into O
    for (int64_t e = 0; e < Dv; ++e) out_row[e] = Elem<T>::from_f32(0.0f);
  } else {
    store_row<T>(o, Dv, weight / l, out_row);
  }
  if (lse_at) *lse_at = lse;
}

// Runs one WorkItem of the CallPlan (work_plan.h): the view queries [item.first, item.end), a group of
// kQueriesPerGroup at a time. The view is a residue class of the head's dilation (strided query and key rows, an
// undilated band over them, then the batch's global keys), the head's global query rows (gathered by position,
// every key visible), or — grouped-query packing — the G query heads of one key/value head side by side.
template <DType T>
void attention_work_item(const CallPlan& plan, const WorkItem& item, float* ws) {
  using S = typename Elem<T>::Storage;
  const AttentionParams& p = plan.p;
  const WorkspaceLayout lay(p);
  const int64_t b = item.batch, G = plan.group;
  const int64_t hk = G > 1 ? item.head : item.head / (p.heads_q / p.heads_k);
  const int64_t h_first = G > 1 ? hk * G : item.head;  // the query head of view column u % G == 0
  const int64_t D = p.head_dim, Dv = p.head_dim_v, dv_pad = round_up(Dv, kNR);
  using Tile = TileElem<T>;  // float32 tiles, bfloat16 pairs (kBf16Tiles) or AMX tiles (kAmxTiles)
  constexpr bool pairs = kPairTiles<T>;
  const int64_t k_row = k_row_of<T>(D);  // tile elements per key row
#if defined(LONGATTN_AMX_TILES)
  [[maybe_unused]] std::conditional_t<kAmxTiles<T>, amx::TileScope, int> tiles{};  // AMX: configured for this item
#endif
  const auto qt_of = [&](int t) { return reinterpret_cast<Tile*>(ws + lay.qt + t * lay.qt_size); };
  const bool global_rows = item.residue == kGlobalRows;
  const SequenceRows seq = plan.sequence(b);
  const bool packed = p.cu_seqlens_q != nullptr;  // variable-length batch: rows of all sequences, one after another

  // Row addresses: query i of head h is q_seq + h·q.head + i·q.seq, and the same for out and lse.
  const S* q_seq = static_cast<const S*>(p.q) + (packed ? seq.q_first * p.q_stride.seq : b * p.q_stride.batch);
  S* out_seq = static_cast<S*>(p.out) + (packed ? seq.q_first * p.out_stride.seq : b * p.out_stride.batch);
  float* lse_seq = p.lse ? p.lse + (packed ? seq.q_first : b * p.lse_batch_stride) : nullptr;
  const bool paged = p.block_table != nullptr;
  const auto key_rows = [&](const void* base, const BshdStrides& st) {
    const S* t = static_cast<const S*>(base) + hk * st.head;
    if (paged) return KeyRows<S>{t, st.seq, p.block_table + b * p.block_table_stride, p.page_size, st.batch};
    return KeyRows<S>{t + (packed ? seq.k_first * st.seq : b * st.batch), st.seq, nullptr, 0, 0};
  };
  const KeyRows<S> k_rows = key_rows(p.k, p.k_stride), v_rows = key_rows(p.v, p.v_stride);

  // The view: view query u is query query_pos(u) of head query_head(u); view key t is key r + t·d.
  int64_t n_global = 0;
  const int64_t* global_pos = plan.has_global() ? plan.globals_of(b, &n_global) : nullptr;
  const int64_t d = global_rows ? 1 : (G > 1 ? 1 : plan.dilation(item.head)), r = global_rows ? 0 : item.residue;
  const ResidueClass rc(seq.n_q, seq.n_k, d, r);
  const SlidingWindowPolicy band =
      global_rows ? SlidingWindowPolicy(seq.n_k, 0, false, -1, -1)
                  : SlidingWindowPolicy(rc.num_keys, rc.first_key_pos, p.causal, p.window_left, p.window_right, G);
  const auto query_pos = [&](int64_t u) { return global_rows ? global_pos[u] : rc.first_query + (u / G) * d; };
  const auto query_head = [&](int64_t u) { return h_first + u % G; };
  const auto key_pos = [&](int64_t t) { return r + t * d; };
  const auto q_row = [&](int64_t u) { return q_seq + query_head(u) * p.q_stride.head + query_pos(u) * p.q_stride.seq; };

  // Key tiles sit on one grid for the whole item, tile m = view keys [origin + m·kBlockK, ... + kBlockK) clipped to
  // the view (and to the item's key split), so a tile packed for one group is the same tile for the next. The
  // origin lines the grid up with the band's left edge (a whole number of tiles before each query tile) when the
  // band has one, and with the split's start for a split.
  const int64_t n_keys = std::min(band.seqlen_k, item.key_hi);
  const int64_t origin = plan.splits > 1   ? item.key_lo
                         : band.left < 0 ? 0
                                         : ((item.first / G + band.offset - band.left) % kBlockK + kBlockK) % kBlockK;
  const auto tile_begin = [&](int64_t m) { return std::max<int64_t>(item.key_lo, origin + m * kBlockK); };
  const auto tile_end = [&](int64_t m) { return std::min<int64_t>(n_keys, origin + (m + 1) * kBlockK); };
  const int n_slots = lay.cached_tiles;
  int64_t slot_tile[kMaxCachedTiles];  // which tile each cache slot holds
  std::fill(slot_tile, slot_tile + n_slots, INT64_MIN);
  const auto slot_of = [&](int64_t m) { return int(((m % n_slots) + n_slots) % n_slots); };

  float* st = ws + lay.st;
  float* alpha = ws + lay.alpha;
  // Scores in log2 units; with softcap, Q · Kᵀ gives s / softcap and the engine applies softcap·log2(e)·tanh.
  const float softcap2 = p.softcap > 0.0f ? p.softcap * kLog2e : 0.0f;
  const float qscale = p.softcap > 0.0f ? p.scale / p.softcap : p.scale * kLog2e;
  static_assert(int64_t(kBlockK) * kBlockQ >= Vec::kWidth * 256, "the score tile stages kWidth query rows");
  int64_t view_key[kBlockK];
  bool real[kBlockK];  // key padding: which keys of the tile are real

  for (int64_t g0 = item.first; g0 < item.end; g0 += kQueriesPerGroup) {
    const int n_sub = int(std::min<int64_t>(kSubTiles, (item.end - g0 + kBlockQ - 1) / kBlockQ));
    int64_t u0[kSubTiles] = {}, nq[kSubTiles] = {}, kb[kSubTiles] = {}, ke[kSubTiles] = {};
    for (int t = 0; t < n_sub; ++t) {
      u0[t] = g0 + int64_t(t) * kBlockQ;
      nq[t] = std::min<int64_t>(kBlockQ, item.end - u0[t]);
      band.key_range(u0[t], u0[t] + nq[t], &kb[t], &ke[t]);
      kb[t] = std::max(kb[t], item.key_lo);
      ke[t] = std::max(kb[t], std::min(ke[t], n_keys));
      const int64_t first = u0[t];
      pack_queries<T>([&](int64_t c) { return q_row(first + c); }, nq[t], round_up(nq[t], kNR), D, qscale, st,
                      qt_of(t));
      std::fill(ws + lay.m + t * kBlockQ, ws + lay.m + (t + 1) * kBlockQ, -INFINITY);
      std::fill(ws + lay.l + t * kBlockQ, ws + lay.l + (t + 1) * kBlockQ, 0.0f);
      std::fill(ws + lay.o + t * lay.o_size, ws + lay.o + (t + 1) * lay.o_size, 0.0f);
    }
    const auto attend = [&](int t, int64_t nk, const Tile* kt_at, const Tile* vt_at, auto mask_scores,
                            const ColumnRanges* ranges) {
      attend_key_block<T>(nq[t], nk, D, dv_pad, kt_at, vt_at, qt_of(t), st, ws + lay.o + t * lay.o_size,
                       ws + lay.m + t * kBlockQ, ws + lay.l + t * kBlockQ, alpha, mask_scores, ranges, softcap2,
                       pairs ? qscale : 1.0f, reinterpret_cast<uint32_t*>(ws + lay.pt), amx_vt_row(kBlockK));
    };
    ColumnRanges ranges;

    // The band. Both of its bounds grow with the query index: the group's keys run from the first sub-tile's
    // start to the last one's end.
    const int64_t k_begin = kb[0], k_end = std::max(kb[0], ke[n_sub - 1]);
    const int64_t m_first = floor_div(k_begin - origin, kBlockK), m_last = floor_div(k_end - 1 - origin, kBlockK);
    // Rows of K, V and Q sit heads·dim apart in memory, a stride the hardware prefetchers do not follow, and on a
    // narrow band little compute hides their latency. So rows are requested ahead, a slice per (tile, sub-tile)
    // step: while a group runs, the keys only the next group of the item needs and the next group's query rows
    // (a band: the next group's other keys are already in the tile cache); in an item's first group, and in
    // groups whose keys are not band-limited, the next uncached tile one tile ahead.
    const int64_t g1 = g0 + kQueriesPerGroup;  // the next group of this item, if any
    int64_t ahead_k0 = 0, ahead_k1 = 0, ahead_q = 0;
    if (g1 < item.end && band.left >= 0) {
      int64_t next_begin, next_end;
      band.key_range(g1, std::min(item.end, g1 + kQueriesPerGroup), &next_begin, &next_end);
      ahead_k0 = std::max(k_end, next_begin);
      ahead_k1 = std::max(ahead_k0, std::min(next_end, n_keys));
      ahead_q = std::min(item.end, g1 + kQueriesPerGroup) - g1;
    }
    const bool first_group = g0 == item.first;
    const int64_t n_steps = std::max<int64_t>(1, (m_last - m_first + 1) * n_sub);
    int64_t step = 0;
    const auto prefetch_next_group_slice = [&]() {
      const int64_t n_k = ahead_k1 - ahead_k0, n = n_k + ahead_q;
      const int64_t from = n * step / n_steps, to = n * (step + 1) / n_steps;
      ++step;
      for (int64_t x = from; x < to; ++x) {
        if (x < n_k) {
          prefetch_row(k_rows.row(key_pos(ahead_k0 + x)), D * int64_t(sizeof(S)));
          prefetch_row(v_rows.row(key_pos(ahead_k0 + x)), Dv * int64_t(sizeof(S)));
        } else {
          prefetch_row(q_row(g1 + x - n_k), D * int64_t(sizeof(S)));
        }
      }
    };
    for (int64_t m = m_first; k_begin < k_end && m <= m_last; ++m) {
      const int64_t j0 = tile_begin(m), nk = tile_end(m) - j0;
      Tile* kt = reinterpret_cast<Tile*>(ws + lay.kcache + slot_of(m) * lay.k_tile);
      Tile* vt = reinterpret_cast<Tile*>(ws + lay.vcache + slot_of(m) * lay.v_tile);
      if (slot_tile[slot_of(m)] != m) {
        pack_keys_values<T>([&](int64_t j) { return k_rows.row(key_pos(j0 + j)); },
                        [&](int64_t j) { return v_rows.row(key_pos(j0 + j)); }, nk, D, Dv, dv_pad, kt, vt);
        slot_tile[slot_of(m)] = m;
      }
      const bool next_cached = slot_tile[slot_of(m + 1)] == m + 1;
      const bool tile_ahead = first_group || band.left < 0;
      const int64_t next0 = tile_end(m);
      const int64_t nk_next = !tile_ahead || next_cached || m == m_last ? 0 : tile_end(m + 1) - next0;
      for (int t = 0; t < n_sub; ++t) {
        for (int64_t j = nk_next * t / n_sub; j < nk_next * (t + 1) / n_sub; ++j) {
          prefetch_row(k_rows.row(key_pos(next0 + j)), D * int64_t(sizeof(S)));
          prefetch_row(v_rows.row(key_pos(next0 + j)), Dv * int64_t(sizeof(S)));
        }
        prefetch_next_group_slice();
        int64_t lo = std::max(j0, kb[t]);
        const int64_t hi = std::min(j0 + nk, ke[t]);
        if (lo >= hi) continue;
        if (pairs) lo = j0 + ((lo - j0) & ~int64_t(1));  // V pairs start on an even tile key (the extra is masked)
        // Key padding: a tile of padding only is skipped; one with some padding is masked row by row.
        int64_t n_real = hi - lo;
        if (p.key_padding_mask) {
          n_real = 0;
          for (int64_t jj = 0; jj < hi - lo; ++jj) n_real += (real[jj] = plan.key_is_real(b, key_pos(lo + jj)));
          if (n_real == 0) continue;
        }
        const bool band_full = band.block_fully_visible(u0[t], u0[t] + nq[t], lo, hi);
        const bool full = band_full && n_real == hi - lo;
        if (!band_full)
          for (int64_t c = 0; c < nq[t]; ++c) {
            ranges.lo[c] = int32_t(std::clamp<int64_t>(band.lo(u0[t] + c) - lo, 0, hi - lo));
            ranges.hi[c] = int32_t(std::clamp<int64_t>(band.hi(u0[t] + c) + 1 - lo, ranges.lo[c], hi - lo));
          }
        attend(t, hi - lo, kt + (lo - j0) * k_row, vt + v_offset_of<T>(lo - j0, dv_pad),
               [&](float* s, int64_t nq_pad) {
          if (full) return;
          if (!band_full) {
            for (int64_t jj = 0; jj < hi - lo; ++jj) view_key[jj] = lo + jj;
            mask_band(band, u0[t], nq_pad, view_key, hi - lo, /*inside=*/true, s);
          }
          if (n_real < hi - lo)
            for (int64_t jj = 0; jj < hi - lo; ++jj)
              if (!real[jj]) std::fill(s + jj * kBlockQ, s + jj * kBlockQ + nq_pad, -INFINITY);
        }, band_full ? nullptr : &ranges);
      }
    }

    // Global keys (Longformer): every query of a residue class also attends each global key, except one its
    // window already counted (or a padding key). Global query rows saw every key in the band above.
    if (!global_rows && n_global > 0) {
      Tile* kt = reinterpret_cast<Tile*>(ws + lay.kglobal);
      Tile* vt = reinterpret_cast<Tile*>(ws + lay.vglobal);
      for (int64_t j0 = 0; j0 < n_global; j0 += kBlockK) {
        const int64_t nk = std::min<int64_t>(kBlockK, n_global - j0);
        pack_keys_values<T>([&](int64_t j) { return k_rows.row(global_pos[j0 + j]); },
                        [&](int64_t j) { return v_rows.row(global_pos[j0 + j]); }, nk, D, Dv, dv_pad, kt, vt);
        for (int64_t j = 0; j < nk; ++j) {  // the key's view index in this residue class, or -1
          const int64_t pos = global_pos[j0 + j];
          view_key[j] = pos % d == r ? (pos - r) / d : -1;
          real[j] = plan.key_is_real(b, pos);
        }
        for (int t = 0; t < n_sub; ++t)
          attend(t, nk, kt, vt, [&](float* s, int64_t nq_pad) {
            mask_band(band, u0[t], nq_pad, view_key, nk, /*inside=*/false, s);
            for (int64_t jj = 0; jj < nk; ++jj)
              if (!real[jj]) std::fill(s + jj * kBlockQ, s + jj * kBlockQ + nq_pad, -INFINITY);
          }, nullptr);
      }
    }

    // The rows: out = O / l (a query with no visible key gets 0); a global query's row is written by its
    // kGlobalRows item, not by its residue class.
    for (int t = 0; t < n_sub; ++t) {
      const float* o = ws + lay.o + t * lay.o_size;
      if constexpr (kAmxTiles<T>) {  // Oᵀ to rows
        transpose_o(o, nq[t], dv_pad, ws + lay.ot);
        o = ws + lay.ot;
      }
      const float* m = ws + lay.m + t * kBlockQ;
      const float* l = ws + lay.l + t * kBlockQ;
      for (int64_t c = 0; c < nq[t]; ++c) {
        const int64_t u = u0[t] + c, i = query_pos(u), h = query_head(u);
        if (!global_rows && plan.has_global() && plan.is_global(b, i)) continue;
        const int64_t prow = plan.splits > 1 ? plan.partial_row(item.split, b, h, i) : -1;
        finish_row<T>(p, o + c * dv_pad, m[c], l[c], p.sinks ? p.sinks + h : nullptr,
                      out_seq + h * p.out_stride.head + i * p.out_stride.seq,
                      lse_seq ? lse_seq + h * p.lse_head_stride + i : nullptr,
                      prow >= 0 ? plan.partial_o + prow * Dv : nullptr,
                      prow >= 0 ? plan.partial_lse + prow : nullptr);
      }
    }
  }
}

// Merges the key splits of rows [row_begin, row_end) of (batch, head_q, query) order into out and lse.
template <DType T>
void merge_split_partials(const CallPlan& plan, int64_t row_begin, int64_t row_end) {
  using S = typename Elem<T>::Storage;
  const AttentionParams& p = plan.p;
  const int64_t Dv = p.head_dim_v, Sq = p.seqlen_q;
  float lse_parts[64], weights[64];
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t i = row % Sq, h = (row / Sq) % p.heads_q, b = row / (Sq * p.heads_q);
    for (int s = 0; s < plan.splits; ++s) lse_parts[s] = plan.partial_lse[plan.partial_row(s, b, h, i)];
    const float lse = lse_merge_weights(lse_parts, plan.splits, p.sinks != nullptr, p.sinks ? p.sinks[h] : 0.0f,
                                        [&](int s, float w) { weights[s] = w; });
    float acc[256];
    std::fill(acc, acc + Dv, 0.0f);
    for (int s = 0; s < plan.splits; ++s) {
      if (weights[s] == 0.0f) continue;
      const float* o = plan.partial_o + plan.partial_row(s, b, h, i) * Dv;
      for (int64_t e = 0; e < Dv; ++e) acc[e] += weights[s] * o[e];
    }
    S* out_row = static_cast<S*>(p.out) + b * p.out_stride.batch + h * p.out_stride.head + i * p.out_stride.seq;
    for (int64_t e = 0; e < Dv; ++e) out_row[e] = Elem<T>::from_f32(acc[e]);
    if (p.lse) p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + i] = lse;
  }
}

}  // namespace longattn::cpu::LONGATTN_ISA_NAME
