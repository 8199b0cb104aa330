// The CPU tiled online-softmax engine (SPEC §1; the iteration/mask policy makes it §2 too).
//
// Included once per ISA after simd.h. One work item = (batch, query head, query tile of kBlockQ rows). For each
// key tile of kBlockK keys that the policy says the query tile touches:
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

#include "band_policy.h"
#include "longattn/longattn.h"
#include "simd.h"

namespace longattn::cpu::LONGATTN_ISA_NAME {

// Register blocking of the two micro-kernels: kMR broadcast rows x kNV vectors of kWidth columns.
#if defined(LONGATTN_ISA_SCALAR)
constexpr int kMR = 4, kNV = 4;
#elif defined(LONGATTN_ISA_AVX2)
constexpr int kMR = 6, kNV = 2;  // 12 accumulators + 2 loads + 1 broadcast = 15 of 16 ymm registers
#else
constexpr int kMR = 8, kNV = 2;  // 16 accumulators of 32 zmm registers
#endif
constexpr int kNR = kNV * Vec::kWidth;
constexpr int kBlockQ = 64;   // queries per work item (a multiple of kNR)
constexpr int kBlockK = 256;  // keys per tile
static_assert(kBlockQ % kNR == 0, "the query tile must be a whole number of micro-kernel columns");

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Scratch floats one thread needs for `p` (the dispatcher allocates it, so no allocation happens in this file).
struct WorkspaceLayout {
  int64_t qt, st, o, m, l, alpha, kbuf, vbuf, total;
  explicit WorkspaceLayout(const AttentionParams& p) {
    const int64_t dv_pad = round_up(p.head_dim_v, kNR);
    int64_t at = 0;
    auto take = [&](int64_t n) { const int64_t here = at; at += round_up(n, 16); return here; };
    qt = take(p.head_dim * kBlockQ);   // Qᵀ (head_dim, kBlockQ), scaled
    st = take(int64_t(kBlockK) * kBlockQ);  // Sᵀ then Pᵀ (kBlockK, kBlockQ)
    o = take(int64_t(kBlockQ) * dv_pad);    // O accumulator (kBlockQ, dv_pad)
    m = take(kBlockQ);
    l = take(kBlockQ);
    alpha = take(kBlockQ);
    kbuf = take(int64_t(kBlockK) * p.head_dim);  // K tile as float32 (kBlockK, head_dim), non-f32 inputs only
    vbuf = take(int64_t(kBlockK) * dv_pad);      // V tile as float32 (kBlockK, dv_pad) when V can't be read in place
    total = at;
  }
};

inline int64_t num_query_tiles(const AttentionParams& p) { return (p.seqlen_q + kBlockQ - 1) / kBlockQ; }

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
inline void qk_microkernel(const float* k, int64_t ldk, int64_t head_dim, const float* qt, float* st) {
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
inline void pv_microkernel(const float* pt, int64_t nk, const float* v, int64_t ldv, float* o, int64_t ldo,
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

// ---- one work item -------------------------------------------------------------------------------------------------
template <DType T>
void attention_work_item(const AttentionParams& p, int64_t item, float* ws) {
  using S = typename Elem<T>::Storage;
  const WorkspaceLayout lay(p);
  const int64_t n_qtiles = num_query_tiles(p);
  const int64_t b = item / (p.heads_q * n_qtiles);
  const int64_t h = (item / n_qtiles) % p.heads_q;
  const int64_t i0 = (item % n_qtiles) * kBlockQ;
  const int64_t nq = std::min<int64_t>(kBlockQ, p.seqlen_q - i0);
  const int64_t nq_pad = round_up(nq, kNR);
  const int64_t hk = h / (p.heads_q / p.heads_k);
  const int64_t D = p.head_dim, Dv = p.head_dim_v, dv_pad = round_up(Dv, kNR);

  float* qt = ws + lay.qt;  // (D, kBlockQ)
  float* st = ws + lay.st;  // (kBlockK, kBlockQ)
  float* o = ws + lay.o;    // (kBlockQ, dv_pad)
  float* m = ws + lay.m;    // (kBlockQ) running max, log2 units
  float* l = ws + lay.l;    // (kBlockQ) running sum
  float* alpha = ws + lay.alpha;

  const SlidingWindowPolicy policy(p.seqlen_q, p.seqlen_k, p.causal, p.window_left, p.window_right);
  int64_t k_begin, k_end;
  policy.key_range(i0, i0 + nq, &k_begin, &k_end);

  // Qt[d, c] = Q[i0 + c, d] * scale * log2(e); padded query columns are zero (finite scores, never written out).
  {
    const S* q = static_cast<const S*>(p.q) + b * p.q_stride.batch + h * p.q_stride.head + i0 * p.q_stride.seq;
    const float qscale = p.scale * 1.4426950408889634f;
    float* row = st;  // borrow the score tile as a staging row
    for (int64_t c = 0; c < nq_pad; ++c) {
      if (c < nq) load_row_f32<T>(q + c * p.q_stride.seq, D, qscale, row);
      else std::fill(row, row + D, 0.0f);
      for (int64_t d = 0; d < D; ++d) qt[d * kBlockQ + c] = row[d];
    }
  }
  std::fill(m, m + kBlockQ, -INFINITY);
  std::fill(l, l + kBlockQ, 0.0f);
  std::fill(o, o + kBlockQ * dv_pad, 0.0f);

  const S* k_head = static_cast<const S*>(p.k) + b * p.k_stride.batch + hk * p.k_stride.head;
  const S* v_head = static_cast<const S*>(p.v) + b * p.v_stride.batch + hk * p.v_stride.head;
  const bool v_in_place = T == DType::kFloat32 && Dv % kNR == 0;

  for (int64_t j0 = k_begin; j0 < k_end; j0 += kBlockK) {
    const int64_t nk = std::min<int64_t>(kBlockK, k_end - j0);

    // K tile (nk, D) and V tile (nk, dv_pad) as float32: read in place when possible.
    const float* kt;
    int64_t ldk;
    if constexpr (T == DType::kFloat32) {
      kt = k_head + j0 * p.k_stride.seq;
      ldk = p.k_stride.seq;
    } else {
      float* kb = ws + lay.kbuf;
      for (int64_t j = 0; j < nk; ++j) load_row_f32<T>(k_head + (j0 + j) * p.k_stride.seq, D, 1.0f, kb + j * D);
      kt = kb;
      ldk = D;
    }
    const float* vt;
    int64_t ldv;
    if (v_in_place) {
      vt = reinterpret_cast<const float*>(v_head) + j0 * p.v_stride.seq;
      ldv = p.v_stride.seq;
    } else {
      float* vb = ws + lay.vbuf;
      for (int64_t j = 0; j < nk; ++j) {
        load_row_f32<T>(v_head + (j0 + j) * p.v_stride.seq, Dv, 1.0f, vb + j * dv_pad);
        std::fill(vb + j * dv_pad + Dv, vb + (j + 1) * dv_pad, 0.0f);
      }
      vt = vb;
      ldv = dv_pad;
    }

    // St = K · Qᵀ : (nk, nq_pad)
    for (int64_t c0 = 0; c0 < nq_pad; c0 += kNR) {
      int64_t j = 0;
      for (; j + kMR <= nk; j += kMR) qk_microkernel<kMR>(kt + j * ldk, ldk, D, qt + c0, st + j * kBlockQ + c0);
      if (j < nk) with_rows<QkRows>(int(nk - j), kt + j * ldk, ldk, D, qt + c0, st + j * kBlockQ + c0);
    }

    // Keys the policy hides from some queries of this tile get -inf.
    if (!policy.block_fully_visible(i0, i0 + nq, j0, j0 + nk)) {
      for (int64_t j = 0; j < nk; ++j) {
        int64_t q_first, q_last;
        policy.visible_queries(j0 + j, &q_first, &q_last);
        const int64_t c_first = std::clamp<int64_t>(q_first - i0, 0, nq_pad);
        const int64_t c_last = std::clamp<int64_t>(q_last - i0 + 1, c_first, nq_pad);
        float* row = st + j * kBlockQ;
        std::fill(row, row + c_first, -INFINITY);
        std::fill(row + c_last, row + nq_pad, -INFINITY);
      }
    }

    // Online softmax, one SIMD lane per query: m_new = max(m, max_j St), P = 2^(St - m_new), l = l*alpha + sum P.
    for (int64_t c = 0; c < nq_pad; c += Vec::kWidth) {
      using Reg = typename Vec::Reg;
      const Reg m_old = Vec::load(m + c);
      Reg m_new = m_old;
      for (int64_t j = 0; j < nk; ++j) m_new = Vec::max(m_new, Vec::load(st + j * kBlockQ + c));
      const Reg m_use = Vec::finite_or_zero(m_new);
      const Reg a = Vec::exp2(Vec::sub(m_old, m_use));
      Reg sum = Vec::zero();
      for (int64_t j = 0; j < nk; ++j) {
        const Reg pj = Vec::exp2(Vec::sub(Vec::load(st + j * kBlockQ + c), m_use));
        Vec::store(st + j * kBlockQ + c, pj);
        sum = Vec::add(sum, pj);
      }
      Vec::store(l + c, Vec::fmadd(Vec::load(l + c), a, sum));
      Vec::store(m + c, m_new);
      Vec::store(alpha + c, a);
    }

    // O = O * alpha + P · V : (nq, dv_pad)
    for (int64_t n0 = 0; n0 < dv_pad; n0 += kNR) {
      int64_t c = 0;
      for (; c + kMR <= nq; c += kMR)
        pv_microkernel<kMR>(st + c, nk, vt + n0, ldv, o + c * dv_pad + n0, dv_pad, alpha + c);
      if (c < nq) with_rows<PvRows>(int(nq - c), st + c, nk, vt + n0, ldv, o + c * dv_pad + n0, dv_pad, alpha + c);
    }
  }

  // out = O / l (a query with no visible key has l = 0 and gets 0); lse = ln(2) * (m + log2(l)).
  S* out = static_cast<S*>(p.out) + b * p.out_stride.batch + h * p.out_stride.head + i0 * p.out_stride.seq;
  float* lse = p.lse ? p.lse + b * p.lse_batch_stride + h * p.lse_head_stride + i0 : nullptr;
  for (int64_t c = 0; c < nq; ++c) {
    const float inv = l[c] == 0.0f ? 0.0f : 1.0f / l[c];
    store_row<T>(o + c * dv_pad, Dv, inv, out + c * p.out_stride.seq);
    if (lse) lse[c] = l[c] == 0.0f ? -INFINITY : 0.6931471805599453f * (m[c] + std::log2(l[c]));
  }
}

}  // namespace longattn::cpu::LONGATTN_ISA_NAME
