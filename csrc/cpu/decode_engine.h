// The CPU decode path: attention for a few query columns against many keys (single-token decoding, speculative
// decoding), where the tile engine's 32-column micro-kernels would compute mostly padding and the time is the
// reading of the KV cache.
//
// A decode item is (sequence, a range of key/value heads, a key split). Its columns are the (query, head) pairs of
// each key/value head — the G query heads that share it, times the queries: NC <= kWidth columns, grouped-query
// packed, so each key row is read once for them. Keys are visited in steps of at most kDecodeBlock, for all the
// item's heads at once (in a (B, S, H, D) cache a key row holds every head: memory is read front to back, which the
// hardware prefetchers follow), and for each head:
//   scores  s[c][j] = q_c · k_j        KB keys x NC columns per step (KB·NC = kWidth accumulators), reduced across
//                                      lanes by Vec::sum_lanes; K read in place (any dtype, converted in registers)
//   softmax online, per column, over the block (vectors across keys)
//   P · V   O[c] += Σ_j p[c][j] v_j   V read in place
// Masks: the band (causal / window, bottom-right) per column, key padding, the item's key split; softcap and sinks
// as in the tile engine (finish_row).
#pragma once

#include <algorithm>
#include <cmath>

#include "engine.h"

namespace longattn::cpu::LONGATTN_ISA_NAME {

constexpr int kDecodeBlock = 64;  // at most this many keys per online-softmax step
// A step's K and V rows for all the item's heads stay under this, so the step in use and the next one, prefetched,
// share the L2 cache.
constexpr int64_t kDecodeStepBytes = 160 * 1024;
// The most columns the decode path takes (0: the ISA has no decode path; the tile engine serves every call).
#if defined(LONGATTN_ISA_SCALAR)
constexpr int kDecodeColumns = 0;
#else
constexpr int kDecodeColumns = Vec::kWidth;
#endif

#if !defined(LONGATTN_ISA_SCALAR)
inline int decode_columns_pow2(int64_t n) {
  int nc = 1;
  while (nc < n) nc *= 2;
  return nc;
}

// Scratch floats of one decode item: per head, Q (NC, D_pad), O (NC, Dv_pad), m and l (NC); the block's scores and
// probabilities (NC, kDecodeBlock); a zero-padded row for head dims that are not a whole number of vectors.
struct DecodeLayout {
  int64_t nc, d_pad, dv_pad, heads, q, o, m, l, s, tail, total;
  DecodeLayout(const AttentionParams& p, int64_t n_cols, int64_t n_heads) {
    nc = decode_columns_pow2(n_cols);
    d_pad = round_up(p.head_dim, Vec::kWidth);
    dv_pad = round_up(p.head_dim_v, Vec::kWidth);
    heads = n_heads;
    int64_t at = 0;
    auto take = [&](int64_t n) { const int64_t here = at; at += round_up(n, 16); return here; };
    q = take(heads * nc * d_pad);
    o = take(heads * nc * dv_pad);
    m = take(heads * nc);
    l = take(heads * nc);
    s = take(nc * kDecodeBlock);
    tail = take(std::max(d_pad, dv_pad));
    total = at;
  }
};

// One vector of a row: elements [d, d + kWidth) converted to float32 (the row has at least that many).
template <DType T>
LONGATTN_ALWAYS_INLINE typename Vec::Reg load_chunk(const typename Elem<T>::Storage* p) {
  if constexpr (T == DType::kFloat32) return Vec::load(p);
  else if constexpr (T == DType::kFloat16) return Vec::load_f16(p);
  else return Vec::load_bf16(p);
}

// The head-dim tail of a row (n < kWidth elements), zero-padded into `tmp`.
template <DType T>
inline typename Vec::Reg load_tail(const typename Elem<T>::Storage* p, int64_t n, float* tmp) {
  std::fill(tmp, tmp + Vec::kWidth, 0.0f);
  for (int64_t e = 0; e < n; ++e) tmp[e] = Elem<T>::to_f32(p[e]);
  return Vec::load(tmp);
}

// s[c * kDecodeBlock + j0 + key] = q_c · k_{key} for KB keys and NC columns (KB · NC = kWidth).
template <DType T, int KB, int NC>
LONGATTN_ALWAYS_INLINE void decode_scores(const typename Elem<T>::Storage* const* rows, const float* q, int64_t D,
                                          int64_t d_pad, float* tail, float* s, int64_t j0) {
  static_assert(KB * NC == Vec::kWidth, "one accumulator per lane of the reduction");
  using Reg = typename Vec::Reg;
  constexpr int W = Vec::kWidth;
  Reg acc[W];
  for (int i = 0; i < W; ++i) acc[i] = Vec::zero();
  // Per head-dim vector: the KB key vectors and the NC query vectors are each loaded once, KB · NC FMAs.
  int64_t d = 0;
  for (; d + W <= D; d += W) {
    Reg kv[KB];
    for (int key = 0; key < KB; ++key) kv[key] = load_chunk<T>(rows[key] + d);
    for (int c = 0; c < NC; ++c) {
      const Reg qv = Vec::load(q + c * d_pad + d);
      for (int key = 0; key < KB; ++key) acc[key * NC + c] = Vec::fmadd(kv[key], qv, acc[key * NC + c]);
    }
  }
  if (d < D) {
    Reg kv[KB];
    for (int key = 0; key < KB; ++key) kv[key] = load_tail<T>(rows[key] + d, D - d, tail);
    for (int c = 0; c < NC; ++c) {
      const Reg qv = Vec::load(q + c * d_pad + d);
      for (int key = 0; key < KB; ++key) acc[key * NC + c] = Vec::fmadd(kv[key], qv, acc[key * NC + c]);
    }
  }
  alignas(64) float sums[W];
  Vec::store(sums, Vec::sum_lanes(acc));  // lane key·NC + c
  for (int key = 0; key < KB; ++key)
    for (int c = 0; c < NC; ++c) s[c * kDecodeBlock + j0 + key] = sums[key * NC + c];
}

template <DType T, int NC>
inline void decode_block_scores(const typename Elem<T>::Storage* const* rows, int64_t nk, const float* q, int64_t D,
                                int64_t d_pad, float* tail, float* s) {
  constexpr int KB = Vec::kWidth / NC;
  int64_t j = 0;
  for (; j + KB <= nk; j += KB) decode_scores<T, KB, NC>(rows + j, q, D, d_pad, tail, s, j);
  if (j < nk) {  // the block's last keys: the rows repeated up to KB, the extra scores dropped (masked below)
    const typename Elem<T>::Storage* pad[KB];
    for (int key = 0; key < KB; ++key) pad[key] = rows[std::min<int64_t>(j + key, nk - 1)];
    decode_scores<T, KB, NC>(pad, q, D, d_pad, tail, s, j);
  }
}

// O[c][n0 : n0 + CH·W] = O[c] · alpha[c] + Σ_j p[c][j] v_j[n0 : ...] for the NC columns: NC · CH accumulators in
// registers, each V vector loaded once for every column.
template <DType T, int NC, int CH>
LONGATTN_ALWAYS_INLINE void decode_pv_slice(const typename Elem<T>::Storage* const* rows, int64_t nk, const float* pr,
                                            int64_t n0, int64_t Dv, int64_t dv_pad, const float* alpha, float* o,
                                            float* tail) {
  using Reg = typename Vec::Reg;
  constexpr int W = Vec::kWidth;
  Reg acc[NC][CH];
  for (int c = 0; c < NC; ++c) {
    const Reg a = Vec::broadcast(alpha + c);
    for (int v = 0; v < CH; ++v) acc[c][v] = Vec::mul(Vec::load(o + c * dv_pad + n0 + v * W), a);
  }
  const bool whole = n0 + CH * W <= Dv;
  for (int64_t j = 0; j < nk; ++j) {
    Reg pj[NC];
    for (int c = 0; c < NC; ++c) pj[c] = Vec::broadcast(pr + c * kDecodeBlock + j);
    for (int v = 0; v < CH; ++v) {
      const int64_t e = n0 + v * W;
      const Reg vr = whole || e + W <= Dv ? load_chunk<T>(rows[j] + e)
                                          : load_tail<T>(rows[j] + e, std::max<int64_t>(0, Dv - e), tail);
      for (int c = 0; c < NC; ++c) acc[c][v] = Vec::fmadd(pj[c], vr, acc[c][v]);
    }
  }
  for (int c = 0; c < NC; ++c)
    for (int v = 0; v < CH; ++v) Vec::store(o + c * dv_pad + n0 + v * W, acc[c][v]);
}

template <DType T, int NC, int CH = 1>
inline void decode_pv_rest(const typename Elem<T>::Storage* const* rows, int64_t nk, const float* pr, int64_t n0,
                           int chunks, int64_t Dv, int64_t dv_pad, const float* alpha, float* o, float* tail) {
  if constexpr (CH <= 16) {
    if (chunks == CH) decode_pv_slice<T, NC, CH>(rows, nk, pr, n0, Dv, dv_pad, alpha, o, tail);
    else decode_pv_rest<T, NC, CH + 1>(rows, nk, pr, n0, chunks, Dv, dv_pad, alpha, o, tail);
  }
}

// O[c] = O[c] · alpha[c] + Σ_j p[c][j] v_j for the NC columns, the value dim in slices of at most 16 / NC vectors.
template <DType T, int NC>
inline void decode_pv(const typename Elem<T>::Storage* const* rows, int64_t nk, const float* pr, int64_t Dv,
                      int64_t dv_pad, const float* alpha, float* o, float* tail) {
  constexpr int W = Vec::kWidth;
  constexpr int CH = NC >= 16 ? 1 : 16 / NC;
  int64_t n0 = 0;
  for (; n0 + CH * W <= dv_pad; n0 += CH * W) decode_pv_slice<T, NC, CH>(rows, nk, pr, n0, Dv, dv_pad, alpha, o, tail);
  if (n0 < dv_pad) decode_pv_rest<T, NC>(rows, nk, pr, n0, int((dv_pad - n0) / W), Dv, dv_pad, alpha, o, tail);
}

// Runs one decode WorkItem: sequence item.batch, key/value heads [item.head, item.head_end), keys of the split.
template <DType T, int NC>
void decode_item_nc(const CallPlan& plan, const WorkItem& item, float* ws) {
  using S = typename Elem<T>::Storage;
  using Reg = typename Vec::Reg;
  constexpr int W = Vec::kWidth;
  const AttentionParams& p = plan.p;
  const int64_t b = item.batch, G = p.heads_q / p.heads_k, D = p.head_dim, Dv = p.head_dim_v;
  const SequenceRows seq = plan.sequence(b);
  const int64_t n_cols = seq.n_q * G, h_lo = item.head, h_hi = item.head_end;
  const DecodeLayout lay(p, n_cols, h_hi - h_lo);
  const bool packed = p.cu_seqlens_q != nullptr, paged = p.block_table != nullptr;
  const SlidingWindowPolicy band(seq.n_k, seq.n_k - seq.n_q, p.causal, p.window_left, p.window_right, G);

  // Rows: query column u of kv head hk is query u / G of head hk·G + u % G.
  const S* q_seq = static_cast<const S*>(p.q) + (packed ? seq.q_first * p.q_stride.seq : b * p.q_stride.batch);
  S* out_seq = static_cast<S*>(p.out) + (packed ? seq.q_first * p.out_stride.seq : b * p.out_stride.batch);
  float* lse_seq = p.lse ? p.lse + (packed ? seq.q_first : b * p.lse_batch_stride) : nullptr;
  const auto row_of = [&](const void* base, const BshdStrides& st, int64_t j) {  // key j, head 0
    const S* t = static_cast<const S*>(base);
    if (paged)
      return t + int64_t(p.block_table[b * p.block_table_stride + j / p.page_size]) * st.batch +
             (j % p.page_size) * st.seq;
    return t + (packed ? (seq.k_first + j) * st.seq : b * st.batch + j * st.seq);
  };

  // The item's keys: its split, and the band of its columns.
  int64_t k_begin, k_end;
  band.key_range(0, n_cols, &k_begin, &k_end);
  k_begin = std::max(k_begin, item.key_lo);
  k_end = std::min({k_end, item.key_hi, seq.n_k});

  const float softcap2 = p.softcap > 0.0f ? p.softcap * kLog2e : 0.0f;
  const float qscale = p.softcap > 0.0f ? p.scale / p.softcap : p.scale * kLog2e;
  float* tail = ws + lay.tail;
  float* s = ws + lay.s;
  for (int64_t hk = h_lo; hk < h_hi; ++hk) {
    const int64_t hh = hk - h_lo;
    float* q = ws + lay.q + hh * NC * lay.d_pad;
    for (int64_t c = 0; c < NC; ++c) {
      float* qc = q + c * lay.d_pad;
      std::fill(qc, qc + lay.d_pad, 0.0f);
      if (c < n_cols)
        load_row_f32<T>(q_seq + (hk * G + c % G) * p.q_stride.head + (c / G) * p.q_stride.seq, D, qscale, qc);
    }
    std::fill(ws + lay.o + hh * NC * lay.dv_pad, ws + lay.o + (hh + 1) * NC * lay.dv_pad, 0.0f);
    std::fill(ws + lay.m + hh * NC, ws + lay.m + (hh + 1) * NC, -INFINITY);
    std::fill(ws + lay.l + hh * NC, ws + lay.l + (hh + 1) * NC, 0.0f);
  }

  // Steps of keys small enough that a step's rows, every head of the item, stay in L2 while each head reads its part.
  // A step's row addresses (head 0) are found once for all heads; the pass of head hk prefetches head hk's part of
  // the next step's rows, so the prefetches are spread over the step and land one step ahead of their use.
  const S* k_base[2][kDecodeBlock];  // [step parity][key]: head 0 of each key row, this step and the next
  const S* v_base[2][kDecodeBlock];
  const S* k_rows[kDecodeBlock];
  const S* v_rows[kDecodeBlock];
  const int64_t row_bytes = (h_hi - h_lo) * (D + Dv) * int64_t(sizeof(S));
  const int64_t step = std::clamp<int64_t>(kDecodeStepBytes / row_bytes / W * W, W, kDecodeBlock);
  const auto find_rows = [&](int64_t j0, int64_t n, int parity) {
    for (int64_t j = 0; j < n; ++j) {
      k_base[parity][j] = row_of(p.k, p.k_stride, j0 + j);
      v_base[parity][j] = row_of(p.v, p.v_stride, j0 + j);
    }
  };
  if (k_begin < k_end) find_rows(k_begin, std::min<int64_t>(step, k_end - k_begin), 0);
  int parity = 0;
  for (int64_t j0 = k_begin; j0 < k_end; j0 += step, parity ^= 1) {
    const int64_t nk = std::min<int64_t>(step, k_end - j0);
    const int64_t next0 = j0 + step, n_next = std::max<int64_t>(0, std::min<int64_t>(step, k_end - next0));
    find_rows(next0, n_next, parity ^ 1);
    for (int64_t hk = h_lo; hk < h_hi; ++hk) {
      const int64_t hh = hk - h_lo;
      for (int64_t j = 0; j < n_next; ++j) {
        prefetch_row(k_base[parity ^ 1][j] + hk * p.k_stride.head, D * int64_t(sizeof(S)));
        prefetch_row(v_base[parity ^ 1][j] + hk * p.v_stride.head, Dv * int64_t(sizeof(S)));
      }
      for (int64_t j = 0; j < nk; ++j) {
        k_rows[j] = k_base[parity][j] + hk * p.k_stride.head;
        v_rows[j] = v_base[parity][j] + hk * p.v_stride.head;
      }
      decode_block_scores<T, NC>(k_rows, nk, ws + lay.q + hh * NC * lay.d_pad, D, lay.d_pad, tail, s);
      float* m = ws + lay.m + hh * NC;
      float* l = ws + lay.l + hh * NC;
      alignas(64) float alpha[NC];
      for (int64_t c = 0; c < NC; ++c) {
        float* sc = s + c * kDecodeBlock;
        if (softcap2 > 0.0f)
          for (int64_t j = 0; j < nk; j += W) Vec::store(sc + j, Vec::mul(Vec::set1(softcap2), Vec::tanh(Vec::load(sc + j))));
        // mask: keys outside the column's band, padding keys, and the block's tail; unused columns see nothing
        const int64_t lo = c < n_cols ? std::max<int64_t>(0, band.lo(c) - j0) : nk;
        const int64_t hi = c < n_cols ? std::clamp<int64_t>(band.hi(c) + 1 - j0, lo, nk) : nk;
        std::fill(sc, sc + lo, -INFINITY);
        std::fill(sc + hi, sc + round_up(nk, W), -INFINITY);
        if (p.key_padding_mask)
          for (int64_t j = lo; j < hi; ++j)
            if (!plan.key_is_real(b, j0 + j)) sc[j] = -INFINITY;
        // online softmax of this column over the block
        Reg mx = Vec::set1(m[c]);
        for (int64_t j = 0; j < nk; j += W) mx = Vec::max(mx, Vec::load(sc + j));
        alignas(64) float lanes[W];
        Vec::store(lanes, mx);
        float m_new = lanes[0];
        for (int i = 1; i < W; ++i) m_new = std::max(m_new, lanes[i]);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        Reg sum = Vec::zero();
        for (int64_t j = 0; j < nk; j += W) {
          const Reg pj = Vec::exp2(Vec::sub(Vec::load(sc + j), Vec::set1(m_use)));
          Vec::store(sc + j, pj);
          sum = Vec::add(sum, pj);
        }
        Vec::store(lanes, sum);
        float total = 0.0f;
        for (int i = 0; i < W; ++i) total += lanes[i];
        alpha[c] = std::exp2(m[c] - m_use);  // exp2(-inf) = 0 on the first visible block
        l[c] = l[c] * alpha[c] + total;
        m[c] = m_new;
      }
      decode_pv<T, NC>(v_rows, nk, s, Dv, lay.dv_pad, alpha, ws + lay.o + hh * NC * lay.dv_pad, tail);
    }
  }

  for (int64_t hk = h_lo; hk < h_hi; ++hk) {
    const int64_t hh = hk - h_lo;
    for (int64_t c = 0; c < n_cols; ++c) {
      const int64_t i = c / G, h = hk * G + c % G;
      const float* o = ws + lay.o + (hh * NC + c) * lay.dv_pad;
      const int64_t prow = plan.splits > 1 ? plan.partial_row(item.split, b, h, i) : -1;
      finish_row<T>(p, o, ws[lay.m + hh * NC + c], ws[lay.l + hh * NC + c], p.sinks ? p.sinks + h : nullptr,
                    out_seq + h * p.out_stride.head + i * p.out_stride.seq,
                    lse_seq ? lse_seq + h * p.lse_head_stride + i : nullptr,
                    prow >= 0 ? plan.partial_o + prow * Dv : nullptr, prow >= 0 ? plan.partial_lse + prow : nullptr);
    }
  }
}

template <DType T>
void decode_work_item(const CallPlan& plan, const WorkItem& item, float* ws) {
  const int64_t n_cols = plan.sequence(item.batch).n_q * (plan.p.heads_q / plan.p.heads_k);
  switch (decode_columns_pow2(n_cols)) {
    case 1: return decode_item_nc<T, 1>(plan, item, ws);
    case 2: return decode_item_nc<T, 2>(plan, item, ws);
    case 4: return decode_item_nc<T, 4>(plan, item, ws);
    case 8: return decode_item_nc<T, 8>(plan, item, ws);
    default:
      if constexpr (Vec::kWidth >= 16) return decode_item_nc<T, 16>(plan, item, ws);
  }
}

inline int64_t decode_workspace_floats(const AttentionParams& p, int64_t n_cols, int64_t n_heads) {
  return DecodeLayout(p, n_cols, n_heads).total;
}
#else
// The portable build has no decode path (kDecodeColumns = 0: the plan never asks for it).
template <DType T>
void decode_work_item(const CallPlan&, const WorkItem&, float*) {}
inline int64_t decode_workspace_floats(const AttentionParams&, int64_t, int64_t) { return 0; }
#endif

}  // namespace longattn::cpu::LONGATTN_ISA_NAME
