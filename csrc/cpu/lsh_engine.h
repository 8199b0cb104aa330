// The CPU kernels of Reformer's LSH attention (docs/semantics.md):
// hashing, chunked attention over the sorted sequence, and
// the combination of the rounds. Included once per ISA after engine.h, whose micro-kernels, online softmax and
// packing routines they reuse: chunked attention is the engine with an LSH iteration/mask policy, working on rows
// gathered in sorted order.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "engine.h"
#include "lsh_plan.h"

namespace longattn::cpu::LONGATTN_ISA_NAME {

// ---- scratch ---------------------------------------------------------------------------------------------------------
// One chunk slot holds a chunk's rows gathered in sorted order and converted to float32:
//   raw (L, D) = qk rows, the chunk's queries and (scaled by key_scale) its keys; val (L, dv_pad); pos (L) original
//   positions and valid (L) 1 for a real token, 0 for padding (both as floats, for vector compares); key_scale (L)
//   each row's key normalisation rsqrt(mean(qk²) + 1e-6) / sqrt(D), applied to the score rows (s = q·k·scale).
// The attend phase keeps chunks_before + chunks_after + 2 slots: the chunks the current chunk attends, plus the one
// the next chunk adds, so each chunk is gathered once per item.
struct LshWorkspaceLayout {
  int64_t qt, o, m, l, st, alpha, pos_q, fold, pt, ot, slots, total;
  int64_t qt_size, o_size, slot_size, raw, val, pos, valid, key_scale;  // offsets inside a slot
  int n_slots;
  explicit LshWorkspaceLayout(const LshPlan& plan) {
    const LshAttentionParams& p = plan.p;
    const int64_t D = p.head_dim, dv_pad = round_up(p.head_dim_v, kNR), L = plan.chunk;
#if defined(LONGATTN_AMX_TILES)
    const bool amx = p.dtype != DType::kFloat32;  // AMX tiles (engine.h): wider rows, Vᵀ, slack after the keys
#else
    const bool amx = false;
#endif
    int64_t at = 0;
    auto take = [&](int64_t n) { const int64_t here = at; at += round_up(n, 16); return here; };
    qt_size = round_up(std::max(D, amx ? amx_k_row(D) : 0) * kBlockQ, 16);
    o_size = round_up(kBlockQ * dv_pad, 16);
    qt = take(kSubTiles * qt_size);  // Qᵀ (D, kBlockQ) per query sub-tile (hash phase: the tokens)
    o = take(kSubTiles * o_size);    // O (kBlockQ, dv_pad) per sub-tile
    m = take(kSubTiles * kBlockQ);   // running max (log2 units) / hash phase: best projection
    l = take(kSubTiles * kBlockQ);   // running sum / hash phase: its index
    st = take(int64_t(kBlockK) * kBlockQ);
    alpha = take(kBlockQ);
    pos_q = take(kSubTiles * kBlockQ);  // query positions per sub-tile / hash phase: the minus side's index
    fold = take(3 * kBlockQ);           // round folding: keep factors and new maxima (2 x kBlockQ), weights
    pt = take(int64_t(kBlockK) / 2 * kBlockQ + kBlockQ);  // pair tiles: Pᵀ as pairs of keys
    ot = take(amx ? o_size : 0);                          // AMX: O rows from the Oᵀ accumulator
    int64_t s = 0;
    auto take_in_slot = [&](int64_t n) { const int64_t here = s; s += round_up(n, 16); return here; };
    raw = take_in_slot(std::max(L * D, amx ? (L + 16) * amx_k_row(D) : 0));
    val = take_in_slot(std::max(L, amx ? amx_vt_row(L) : 0) * dv_pad);
    pos = take_in_slot(L);
    valid = take_in_slot(L);
    key_scale = take_in_slot(L);
    slot_size = s;
    n_slots = int(plan.before + plan.after + 2);
    slots = take(n_slots * slot_size);
    total = at;
  }
};

// Projections of kNR tokens onto MR rotation vectors, folded straight from registers into each token's running
// max / argmax and min / argmin (the projections never reach memory). Rows are taken in ascending order with strict
// compares, so the first maximal (minimal) index wins a tie.
//   rot (MR, D) row stride D;  qt (D, kNR) row stride kBlockQ;  state (4, kNR): max, argmax, min, argmin rows,
//   row stride kBlockQ;  row0 = index of the first rotation vector
template <int MR>
LONGATTN_ALWAYS_INLINE void hash_microkernel(const float* rot, int64_t D, const float* qt, float* best_max,
                                             float* arg_max, float* best_min, float* arg_min, int64_t row0) {
  using Reg = typename Vec::Reg;
  Reg acc[MR][kNV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v) acc[r][v] = Vec::zero();
  for (int64_t d = 0; d < D; ++d) {
    Reg x[kNV];
    for (int v = 0; v < kNV; ++v) x[v] = Vec::load(qt + d * kBlockQ + v * Vec::kWidth);
    for (int r = 0; r < MR; ++r) {
      const Reg a = Vec::broadcast(rot + r * D + d);
      for (int v = 0; v < kNV; ++v) acc[r][v] = Vec::fmadd(a, x[v], acc[r][v]);
    }
  }
  for (int v = 0; v < kNV; ++v) {
    const int64_t c = v * Vec::kWidth;
    Reg mx = Vec::load(best_max + c), amx = Vec::load(arg_max + c);
    Reg mn = Vec::load(best_min + c), amn = Vec::load(arg_min + c);
    for (int r = 0; r < MR; ++r) {
      const Reg idx = Vec::set1(float(row0 + r));
      amx = Vec::select_lt(mx, acc[r][v], idx, amx);
      mx = Vec::max(mx, acc[r][v]);
      amn = Vec::select_lt(acc[r][v], mn, idx, amn);
      mn = Vec::min(mn, acc[r][v]);
    }
    Vec::store(best_max + c, mx);
    Vec::store(arg_max + c, amx);
    Vec::store(best_min + c, mn);
    Vec::store(arg_min + c, amn);
  }
}
template <int MR> struct HashRows {
  static void run(const float* rot, int64_t D, const float* qt, float* mx, float* amx, float* mn, float* amn,
                  int64_t row0) {
    hash_microkernel<MR>(rot, D, qt, mx, amx, mn, amn, row0);
  }
};

// ---- phase 1: key normalisation and hashing --------------------------------------------------------------------------
// For tokens [t0, t0 + n) of one (batch, head): each key's normalisation factor, and unless buckets were given, the
// buckets of every round. The projections x·R_r come from the engine's QKᵀ micro-kernel (rotation vectors as rows,
// tokens as columns), and the argmax of concat(xR, -xR) is a running max and min per column: one SIMD lane per
// token, no horizontal reductions.
template <DType T>
void lsh_hash_item(const LshPlan& plan, int64_t item, float* ws) {
  using S = typename Elem<T>::Storage;
  using Reg = typename Vec::Reg;
  constexpr int W = Vec::kWidth;
  const LshAttentionParams& p = plan.p;
  const LshWorkspaceLayout lay(plan);
  const int64_t blocks = LshPlan::blocks_of(p.seqlen, plan.tokens_per_item);
  const int64_t b = item / (p.heads * blocks), h = (item / blocks) % p.heads;
  const int64_t t0 = (item % blocks) * plan.tokens_per_item;
  const int64_t n = std::min(plan.tokens_per_item, p.seqlen - t0);
  const int64_t D = p.head_dim, columns = lsh_rotation_columns(p);
  const bool factorized = p.bucket_factors && p.n_bucket_factors > 0;
  const int64_t n_factors = factorized ? p.n_bucket_factors : 1;
  const S* qk_head = static_cast<const S*>(p.qk) + b * p.qk_stride.batch + h * p.qk_stride.head;
  float* st = ws + lay.st;

  const int n_sub = int((n + kBlockQ - 1) / kBlockQ);
  const float inv_sqrt_d = 1.0f / std::sqrt(float(D));
  for (int t = 0; t < n_sub; ++t) {  // Qᵀ of each tile of tokens, unscaled
    const int64_t first = t0 + int64_t(t) * kBlockQ, nq = std::min<int64_t>(kBlockQ, t0 + n - first);
    float* qt = ws + lay.qt + t * lay.qt_size;
    pack_query_tile<T>([&](int64_t c) { return qk_head + (first + c) * p.qk_stride.seq; }, nq, round_up(nq, kNR), D,
                       1.0f, st, qt);
    // key_scale = rsqrt(mean(qk²) + 1e-6) / sqrt(D): Σ qk² per column of Qᵀ, one token per lane
    float* sum_sq = ws + lay.alpha;  // (kBlockQ)
    for (int64_t c = 0; c < kBlockQ; c += W) {
      Reg acc = Vec::zero();
      for (int64_t d = 0; d < D; ++d) acc = Vec::fmadd(Vec::load(qt + d * kBlockQ + c), Vec::load(qt + d * kBlockQ + c), acc);
      Vec::store(sum_sq + c, acc);
    }
    float* scale = plan.key_scale_at(b, h) + first;
    for (int64_t c = 0; c < nq; ++c) scale[c] = inv_sqrt_d / std::sqrt(sum_sq[c] / float(D) + 1e-6f);
  }
  for (int64_t r = 0; plan.hash && r < p.n_hashes; ++r) {
    const float* rot_round = plan.rotations_t.data() + (h * p.n_hashes + r) * columns * D;  // (columns, D)
    for (int t = 0; t < n_sub; ++t) {
      const int64_t first = t0 + int64_t(t) * kBlockQ, nq = std::min<int64_t>(kBlockQ, t0 + n - first);
      const int64_t nq_pad = round_up(nq, kNR);
      const float* qt = ws + lay.qt + t * lay.qt_size;
      float* best_max = ws + lay.m;     // per column: max of x·R so far and its index
      float* arg_max = ws + lay.l;
      float* best_min = ws + lay.o;     // per column: min of x·R so far (= max of -x·R) and its index
      float* arg_min = ws + lay.pos_q;
      int32_t* out = plan.buckets_at(b, h, r) + first;
      std::fill(out, out + nq, 0);
      // One argmax per factor over its own rotation columns; bucket = sum of b_i * (product of the factors before).
      int64_t column0 = 0, place = 1;
      for (int64_t f = 0; f < n_factors; ++f) {
        const int64_t factor = factorized ? p.bucket_factors[f] : p.n_buckets, half = factor / 2;
        const float* rot = rot_round + column0 * D;  // (half, D)
        std::fill(best_max, best_max + nq_pad, -INFINITY);
        std::fill(best_min, best_min + nq_pad, INFINITY);
        std::fill(arg_max, arg_max + nq_pad, 0.0f);
        std::fill(arg_min, arg_min + nq_pad, 0.0f);
        // Rotation vectors in blocks of kMR (ascending), each block meeting every panel of kNR tokens.
        int64_t j = 0;
        for (; j + kMR <= half; j += kMR)
          for (int64_t c0 = 0; c0 < nq_pad; c0 += kNR)
            hash_microkernel<kMR>(rot + j * D, D, qt + c0, best_max + c0, arg_max + c0, best_min + c0, arg_min + c0,
                                  j);
        if (j < half)
          for (int64_t c0 = 0; c0 < nq_pad; c0 += kNR)
            with_rows<HashRows>(int(half - j), rot + j * D, D, qt + c0, best_max + c0, arg_max + c0, best_min + c0,
                                arg_min + c0, j);
        // concat(xR, -xR): the + half comes first, so it wins when max(xR) == max(-xR).
        for (int64_t c = 0; c < nq; ++c) {
          const bool plus = best_max[c] >= -best_min[c];
          const int64_t b_f = plus ? int64_t(arg_max[c]) : half + int64_t(arg_min[c]);
          out[c] += int32_t(b_f * place);
        }
        column0 += half;
        place *= factor;
      }
      if (p.key_padding_mask)
        for (int64_t c = 0; c < nq; ++c)
          if (!p.key_padding_mask[b * p.mask_batch_stride + (first + c) * p.mask_seq_stride])
            out[c] = int32_t(p.n_buckets);
    }
  }
}

// ---- phase 3: chunked attention -------------------------------------------------------------------------------------
// Gathers the rows of sorted chunk `chunk` (any integer; the data is chunk mod n_chunks()) into a slot: float32
// rows, or with kPairTiles<T> the pair tiles of engine.h (qk rows as stored in pairs along the head dim; v in
// pairs of consecutive keys, a zero partner after an odd last key, or for AMX as Vᵀ pairs of amx_vt_row(L)).
template <DType T>
void lsh_load_slot(const LshPlan& plan, const LshWorkspaceLayout& lay, int64_t b, int64_t h, int64_t chunk,
                   float* slot) {
  using S = typename Elem<T>::Storage;
  const LshAttentionParams& p = plan.p;
  const int64_t L = plan.chunk, D = p.head_dim, Dv = p.head_dim_v, dv_pad = round_up(Dv, kNR);
  const int64_t n = plan.n_chunks();
  const int32_t* sorted = plan.sorted_at(b, h) + (chunk % n + n) % n * L;
  const S* qk_head = static_cast<const S*>(p.qk) + b * p.qk_stride.batch + h * p.qk_stride.head;
  const S* v_head = static_cast<const S*>(p.v) + b * p.v_stride.batch + h * p.v_stride.head;
  const float* key_scale = plan.key_scale_at(b, h);
#if defined(LONGATTN_AMX_TILES)
  if constexpr (kAmxTiles<T>)
    pack_kv_tile_amx([&](int64_t j) { return qk_head + sorted[j] * p.qk_stride.seq; },
                     [&](int64_t j) { return v_head + sorted[j] * p.v_stride.seq; }, L, D, Dv, dv_pad, amx_k_row(D),
                     amx_vt_row(L), reinterpret_cast<uint32_t*>(slot + lay.raw),
                     reinterpret_cast<uint32_t*>(slot + lay.val));
#endif
  if constexpr (kBf16Tiles<T>) {
    pack_kv_tile_bf16([&](int64_t j) { return qk_head + sorted[j] * p.qk_stride.seq; },
                      [&](int64_t j) { return v_head + sorted[j] * p.v_stride.seq; }, L, D, Dv, dv_pad,
                      reinterpret_cast<uint32_t*>(slot + lay.raw), reinterpret_cast<uint32_t*>(slot + lay.val));
  }
  for (int64_t j = 0; j < L; ++j) {
    const int64_t tok = sorted[j];
    slot[lay.key_scale + j] = key_scale[tok];
    slot[lay.pos + j] = float(tok);
    slot[lay.valid + j] =
        p.key_padding_mask && !p.key_padding_mask[b * p.mask_batch_stride + tok * p.mask_seq_stride] ? 0.0f : 1.0f;
    if constexpr (kPairTiles<T>) continue;
    load_row_f32<T>(qk_head + tok * p.qk_stride.seq, D, 1.0f, slot + lay.raw + j * D);
    float* val = slot + lay.val + j * dv_pad;
    load_row_f32<T>(v_head + tok * p.v_stride.seq, Dv, 1.0f, val);
    std::fill(val + Dv, val + dv_pad, 0.0f);
  }
}

// Scores of key rows [0, nk) (positions pos_k, validity valid_k, normalisation key_scale) against query columns
// (positions pos_q), in log2 units: each row is first scaled by its key's normalisation, then a padding key, or with
// causal a key after the query, is replaced by -1e9, and a key at the query's own position by -1e5 (LSH step
// 6: replaced, not -inf, so a token with nothing else to see attends itself).
inline void lsh_mask_scores(float* st, int64_t nk, int64_t nq_pad, const float* pos_k, const float* valid_k,
                            const float* key_scale, const float* pos_q, bool causal) {
  using Reg = typename Vec::Reg;
  constexpr int W = Vec::kWidth;
  const Reg hidden = Vec::set1(-1e9f * kLog2e), self = Vec::set1(-1e5f * kLog2e);
  for (int64_t jj = 0; jj < nk; ++jj) {
    float* row = st + jj * kBlockQ;
    const Reg pk = Vec::set1(pos_k[jj]), scale = Vec::set1(key_scale[jj]);
    const bool padding = valid_k[jj] == 0.0f;
    for (int64_t c = 0; c < nq_pad; c += W) {
      const Reg pq = Vec::load(pos_q + c);
      Reg s = padding ? hidden : Vec::mul(Vec::load(row + c), scale);
      if (causal) s = Vec::select_lt(pq, pk, hidden, s);  // key after the query
      Vec::store(row + c, Vec::select_eq(pq, pk, self, s));
    }
  }
}

// Folds one query tile's results of this round into the running combination at the queries' original positions,
// and after the last round writes the output rows and lse. Everything stays in log2 units: a query's round result
// is o / l with log-sum-exp L = m + log2(l) (o unnormalised, l its softmax sum, m its max), so its weight in
// out = Σ_r 2^(L_r - L) · o_r / l_r is proportional to 2^m · l, and its contribution to 2^m · o. The running state is
// acc = Σ 2^(m_r - M) · o_r, acc_sum = Σ 2^(m_r - M) · l_r, M = max_r m_r; out = acc / acc_sum at the end, and
// lse = ln2 · (M + log2(acc_sum)). The exponentials of a tile are computed together, one query per SIMD lane.
template <DType T>
void lsh_fold_tile(const LshPlan& plan, int64_t round, int64_t b, int64_t h, int64_t nq, const float* pos_q,
                   const float* o, int64_t ldo, const float* m, const float* l, float* keep, float* weight) {
  using S = typename Elem<T>::Storage;
  using Reg = typename Vec::Reg;
  constexpr int W = Vec::kWidth;
  const LshAttentionParams& p = plan.p;
  const int64_t Dv = p.head_dim_v;
  S* out_head = static_cast<S*>(p.out) + b * p.out_stride.batch + h * p.out_stride.head;
  float* lse_head = p.lse ? p.lse + b * p.lse_batch_stride + h * p.lse_head_stride : nullptr;
  const auto tok_of = [&](int64_t c) { return int64_t(pos_q[c]); };
  if (plan.rounds == 1) {
    for (int64_t c = 0; c < nq; ++c) {
      store_row<T>(o + c * ldo, Dv, 1.0f / l[c], out_head + tok_of(c) * p.out_stride.seq);
      if (lse_head) lse_head[tok_of(c)] = kLn2 * (m[c] + std::log2(l[c]));
    }
    return;
  }
  const int64_t base = (b * p.heads + h) * p.seqlen;
  // One block per token: acc (Dv), then its max and sum, so a token's state is one run of cache lines.
  const int64_t ld = plan.acc_stride();
  float* state = plan.acc.data() + base * ld;
  const auto acc_of = [&](int64_t tok) { return state + tok * ld; };
  const auto max_of = [&](int64_t tok) -> float& { return state[tok * ld + Dv]; };
  const auto sum_of = [&](int64_t tok) -> float& { return state[tok * ld + Dv + 1]; };
  if (round == 0) {
    for (int64_t c = 0; c < nq; ++c) {
      std::copy(o + c * ldo, o + c * ldo + Dv, acc_of(tok_of(c)));
      max_of(tok_of(c)) = m[c];
      sum_of(tok_of(c)) = l[c];
    }
  } else {
    // keep = 2^(M - M'), weight = 2^(m - M') with M' = max(M, m): vectors of queries
    float* old_max = keep;
    for (int64_t c = 0; c < nq; ++c) old_max[c] = max_of(tok_of(c));
    const int64_t nq_pad = round_up(nq, W);
    std::fill(old_max + nq, old_max + nq_pad, 0.0f);
    for (int64_t c = 0; c < nq_pad; c += W) {
      const Reg M = Vec::load(old_max + c), mr = Vec::load(m + c), M_new = Vec::max(M, mr);
      Vec::store(weight + c, Vec::exp2(Vec::sub(mr, M_new)));
      Vec::store(keep + c, Vec::exp2(Vec::sub(M, M_new)));
      Vec::store(old_max + c + kBlockQ, M_new);  // staged next to keep (the caller gives 2 * kBlockQ floats)
    }
    for (int64_t c = 0; c < nq; ++c) {
      const int64_t tok = tok_of(c);
      float* a = acc_of(tok);
      const float* oc = o + c * ldo;
      int64_t e = 0;
#if !defined(LONGATTN_ISA_SCALAR)
      const Reg k = Vec::set1(keep[c]), w = Vec::set1(weight[c]);
      for (; e + W <= Dv; e += W) Vec::store(a + e, Vec::fmadd(Vec::load(oc + e), w, Vec::mul(Vec::load(a + e), k)));
#endif
      for (; e < Dv; ++e) a[e] = oc[e] * weight[c] + a[e] * keep[c];
      sum_of(tok) = l[c] * weight[c] + sum_of(tok) * keep[c];
      max_of(tok) = old_max[c + kBlockQ];
    }
  }
  if (round == plan.rounds - 1)
    for (int64_t c = 0; c < nq; ++c) {
      const int64_t tok = tok_of(c);
      store_row<T>(acc_of(tok), Dv, 1.0f / sum_of(tok), out_head + tok * p.out_stride.seq);
      if (lse_head) lse_head[tok] = kLn2 * (max_of(tok) + std::log2(sum_of(tok)));
    }
}

// Chunks [c_begin, c_end) of round `round` of one (batch, head). Chunk c's queries are its own rows (raw qk); its
// keys are the rows of chunks c - before .. c + after (cyclic over all rounds, as Reformer does), in that order.
template <DType T>
void lsh_attend_item(const LshPlan& plan, int64_t round, int64_t item, float* ws) {
  const LshAttentionParams& p = plan.p;
  const LshWorkspaceLayout lay(plan);
  const int64_t per_head = LshPlan::blocks_of(plan.chunks_per_round, plan.chunks_per_item);
  const int64_t b = item / (p.heads * per_head), h = (item / per_head) % p.heads;
  const int64_t round_first = round * plan.chunks_per_round;
  const int64_t c_begin = round_first + (item % per_head) * plan.chunks_per_item;
  const int64_t c_end = std::min(round_first + plan.chunks_per_round, c_begin + plan.chunks_per_item);
  const int64_t L = plan.chunk, D = p.head_dim, dv_pad = round_up(p.head_dim_v, kNR);
  using Tile = TileElem<T>;  // float32 rows, bfloat16 pairs (kBf16Tiles) or AMX tiles (kAmxTiles)
  constexpr bool pairs = kPairTiles<T>;
  const int64_t k_row = k_row_of<T>(D);  // tile elements per slot row
#if defined(LONGATTN_AMX_TILES)
  [[maybe_unused]] std::conditional_t<kAmxTiles<T>, amx::TileScope, int> tiles{};  // AMX: configured for this item
#endif
  const auto qt_of = [&](int t) { return reinterpret_cast<Tile*>(ws + lay.qt + t * lay.qt_size); };
  float* st = ws + lay.st;
  float* alpha = ws + lay.alpha;

  // Slots are tagged with the unwrapped chunk index, so the chunks one chunk attends (consecutive integers) never
  // share a slot, even where the cyclic window wraps around.
  int64_t slot_chunk[64];
  const int n_slots = lay.n_slots;
  std::fill(slot_chunk, slot_chunk + n_slots, INT64_MIN);
  const auto slot_of = [&](int64_t u) { return ws + lay.slots + ((u % n_slots + n_slots) % n_slots) * lay.slot_size; };
  const auto ensure = [&](int64_t u) {
    const int64_t s = (u % n_slots + n_slots) % n_slots;
    if (slot_chunk[s] != u) {
      lsh_load_slot<T>(plan, lay, b, h, u, slot_of(u));
      slot_chunk[s] = u;
    }
    return slot_of(u);
  };

  for (int64_t c = c_begin; c < c_end; ++c) {
    for (int64_t u = c - plan.before; u <= c + plan.after; ++u) ensure(u);
    // The running-combination rows this chunk will update sit at random positions: request them now, so the
    // fold after the attention finds them in cache.
    const float* own = slot_of(c);
    if (plan.rounds > 1)
      for (int64_t j = 0; j < L; ++j) {
        const int64_t at = (b * p.heads + h) * p.seqlen + int64_t(own[lay.pos + j]);
        prefetch_row(plan.acc.data() + at * plan.acc_stride(), (p.head_dim_v + 2) * int64_t(sizeof(float)));
      }

    for (int64_t q0 = 0; q0 < L; q0 += kQueriesPerGroup) {  // queries of the chunk, up to kSubTiles tiles at a time
      const int n_sub = int(std::min<int64_t>(kSubTiles, (L - q0 + kBlockQ - 1) / kBlockQ));
      int64_t nq[kSubTiles] = {};
      for (int t = 0; t < n_sub; ++t) {
        const int64_t first = q0 + int64_t(t) * kBlockQ;
        nq[t] = std::min<int64_t>(kBlockQ, L - first);
        const int64_t nq_pad = round_up(nq[t], kNR);
        if constexpr (pairs)  // the queries from the slot's 16-bit rows (pairs along the head dim)
          pack_query_tile_bf16([&](int64_t col) {
            return reinterpret_cast<const uint16_t*>(own + lay.raw) + (first + col) * 2 * k_row;
          }, nq[t], nq_pad, D, qt_of(t), kAmxTiles<T> ? k_row : -1);
        else
          pack_query_tile<DType::kFloat32>([&](int64_t col) { return own + lay.raw + (first + col) * D; }, nq[t],
                                           nq_pad, D, kLog2e, st, qt_of(t));
        float* pos_q = ws + lay.pos_q + t * kBlockQ;
        std::copy(own + lay.pos + first, own + lay.pos + first + nq[t], pos_q);
        std::fill(pos_q + nq[t], pos_q + kBlockQ, -1.0f);  // padding columns: no position
        std::fill(ws + lay.m + t * kBlockQ, ws + lay.m + (t + 1) * kBlockQ, -INFINITY);
        std::fill(ws + lay.l + t * kBlockQ, ws + lay.l + (t + 1) * kBlockQ, 0.0f);
        std::fill(ws + lay.o + t * lay.o_size, ws + lay.o + (t + 1) * lay.o_size, 0.0f);
      }
      for (int64_t u = c - plan.before; u <= c + plan.after; ++u) {
        const float* slot = slot_of(u);
        for (int64_t j0 = 0; j0 < L; j0 += kBlockK) {
          const int64_t nk = std::min<int64_t>(kBlockK, L - j0);
          for (int t = 0; t < n_sub; ++t) {
            const float* pos_q = ws + lay.pos_q + t * kBlockQ;
            // (j0 is a multiple of kBlockK: V pairs start on an even key)
            attend_key_block<T>(nq[t], nk, D, dv_pad, reinterpret_cast<const Tile*>(slot + lay.raw) + j0 * k_row,
                             reinterpret_cast<const Tile*>(slot + lay.val) + v_offset_of<T>(j0, dv_pad), qt_of(t),
                             st, ws + lay.o + t * lay.o_size, ws + lay.m + t * kBlockQ, ws + lay.l + t * kBlockQ,
                             alpha,
                             [&](float* s, int64_t nq_pad) {
                               lsh_mask_scores(s, nk, nq_pad, slot + lay.pos + j0, slot + lay.valid + j0,
                                               slot + lay.key_scale + j0, pos_q, p.causal);
                             },
                             nullptr, 0.0f, pairs ? kLog2e : 1.0f, reinterpret_cast<uint32_t*>(ws + lay.pt),
                             amx_vt_row(L));
          }
        }
      }
      // This round's result, folded in at the queries' original positions. l >= 1: scores are replaced, never
      // -inf, so no row is empty.
      for (int t = 0; t < n_sub; ++t) {
        float* o = ws + lay.o + t * lay.o_size;
        if constexpr (kAmxTiles<T>) {  // Oᵀ to rows
          transpose_o(o, nq[t], dv_pad, ws + lay.ot);
          o = ws + lay.ot;
        }
        lsh_fold_tile<T>(plan, round, b, h, nq[t], ws + lay.pos_q + t * kBlockQ, o, dv_pad, ws + lay.m + t * kBlockQ,
                         ws + lay.l + t * kBlockQ, ws + lay.fold, ws + lay.fold + 2 * kBlockQ);
      }
    }
  }
}

}  // namespace longattn::cpu::LONGATTN_ISA_NAME
