// Tensor-core tiled forward attention for sm80+ (FlashAttention-2 class): mma.sync m16n8k16 (fp16 / bf16 in,
// fp32 accumulate), ldmatrix, cp.async; one online-softmax tile loop for every mask, with the iteration/mask policy
// of the CPU engine (band_policy.h): dense, causal, sliding window, dilation as residue-class views, Longformer
// global keys and global query rows.
//
// Block = 4 warps, a tile of kBlockM = 64 queries of one view (warp w owns rows 16w .. 16w + 15); key tiles of
// kBlockN = 64 rows. Shared memory (rows padded by 8 elements so ldmatrix row addresses fall in distinct banks):
//   sQ (64, D + 8), sK (64, D + 8), sV (64, D + 8)                           [Elem]
// Per warp registers:  S (16, 64) as 8 m16n8 fp32 fragments, O (16, D) as D / 8 fragments, row max m and sum l for
// the two rows (g, g + 8) a thread's fragments touch.
//
// The tile loop and the masks (ViewPolicy) are separate from the MMA atoms (mma_16816 / ldmatrix helpers) so an
// sm90 wgmma/TMA main loop can reuse the former.
#pragma once

#include <cstdint>

#include "flash_params.h"
#include "lse_merge.h"
#include "platform.h"
#include "ptx.cuh"

namespace longattn::LONGATTN_CUDA_NS {

constexpr int kBlockM = 64;
constexpr int kBlockN = 64;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

template <int D> __host__ __device__ constexpr int smem_row() { return D + 8; }  // elements per padded shared-memory row
template <int D> __host__ __device__ constexpr int smem_bytes() { return 3 * kBlockM * smem_row<D>() * 2; }

// ---- MMA atoms -----------------------------------------------------------------------------------------------------
template <typename Elem> struct MmaAtom;
template <> struct MmaAtom<__half> {
  // D (16x8 fp32) += A (16x16 row-major) · B (16x8 col-major)
  static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    ptx::mma_m16n8k16_f16(c, a, b);
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ void store2(__half* dst, float lo, float hi) {
    *reinterpret_cast<__half2*>(dst) = __floats2half2_rn(lo, hi);
  }
};
template <> struct MmaAtom<__nv_bfloat16> {
  static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    ptx::mma_m16n8k16_bf16(c, a, b);
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ void store2(__nv_bfloat16* dst, float lo, float hi) {
    *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(lo, hi);
  }
};

// ---- the tile loop's warp-level steps (shared with the LSH chunk kernel, lsh_fwd.cuh) ------------------------------
// Copies a (64, D) tile into shared memory (rows of kRow elements), row i from base + offset_of(i); a row whose
// offset is -1 is zero-filled without reading. 16 bytes per cp.async, the block's kThreads threads together.
template <typename Elem, int D, typename OffsetOf>
__device__ __forceinline__ void load_tile_async(Elem* dst, const Elem* base, OffsetOf offset_of, int tid) {
  constexpr int kRow = smem_row<D>(), kChunks = D / 8;  // 16-byte chunks per row
  for (int c = tid; c < 64 * kChunks; c += kThreads) {
    const int row = c / kChunks, col = (c % kChunks) * 8;
    const int64_t off = offset_of(row);
    ptx::cp_async_16(dst + row * kRow + col, base + (off >= 0 ? off : 0) + col, off >= 0 ? 16 : 0);
  }
}

// S (16, 64) = Q (16, D) · Kᵀ for warp `warp`'s rows of sQ (64, kRow) against sK (64, kRow), fp32 accumulators:
// element (g + 8·(e / 2), 8n + 2·tig + e % 2) of the warp's rows is s[n][e].
template <typename Elem, int D>
__device__ __forceinline__ void warp_scores(float s[8][4], const Elem* sQ, const Elem* sK, int warp, int lane) {
  constexpr int kRow = smem_row<D>();
#pragma unroll
  for (int n = 0; n < 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    uint32_t a[4];
    {
      const int mi = lane / 8, row = warp * 16 + (mi % 2) * 8 + lane % 8, col = ks * 16 + (mi / 2) * 8;
      ptx::ldmatrix_x4(a, sQ + row * kRow + col);
    }
#pragma unroll
    for (int n = 0; n < 8; n += 2) {  // two n-tiles of 8 keys per ldmatrix.x4
      uint32_t bk[4];
      const int mi = lane / 8, row = n * 8 + (mi / 2) * 8 + lane % 8, col = ks * 16 + (mi % 2) * 8;
      ptx::ldmatrix_x4(bk, sK + row * kRow + col);
      MmaAtom<Elem>::mma(s[n], a, bk);
      MmaAtom<Elem>::mma(s[n + 1], a, bk + 2);
    }
  }
}

// online_softmax_update: folds a tile of scores (log2 units; -inf = not visible) into the running max m and sum l of
// the thread's two rows (g, g + 8; the 4 threads of a quad share a row), turns s into the tile's P = 2^(s - m) and
// rescales the output accumulators O (16, D) to the new max.
template <int kDTiles>
__device__ __forceinline__ void online_softmax_update(float s[8][4], float m_row[2], float l_row[2],
                                                      float o[kDTiles][4]) {
  float alpha[2];
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    float mx = m_row[rr];
#pragma unroll
    for (int n = 0; n < 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * rr], s[n][2 * rr + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float ref = mx == -INFINITY ? 0.0f : mx;  // a row with nothing visible yet stays empty, never NaN
    alpha[rr] = exp2f(m_row[rr] - ref);
    float sum = 0.0f;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      s[n][2 * rr] = exp2f(s[n][2 * rr] - ref);
      s[n][2 * rr + 1] = exp2f(s[n][2 * rr + 1] - ref);
      sum += s[n][2 * rr] + s[n][2 * rr + 1];
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    l_row[rr] = l_row[rr] * alpha[rr] + sum;
    m_row[rr] = mx;
  }
#pragma unroll
  for (int i = 0; i < kDTiles; ++i) {
    o[i][0] *= alpha[0];
    o[i][1] *= alpha[0];
    o[i][2] *= alpha[1];
    o[i][3] *= alpha[1];
  }
}

// O (16, D) += P (16, 64) · V (64, D); P's fragments are S's accumulators repacked as A operands (rounded to Elem).
template <typename Elem, int D>
__device__ __forceinline__ void warp_pv(float o[D / 8][4], const float p[8][4], const Elem* sV, int lane) {
  constexpr int kRow = smem_row<D>();
  using Atom = MmaAtom<Elem>;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {  // 16 keys per k-step
    uint32_t a[4];
    a[0] = Atom::pack(p[2 * kk][0], p[2 * kk][1]);
    a[1] = Atom::pack(p[2 * kk][2], p[2 * kk][3]);
    a[2] = Atom::pack(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    a[3] = Atom::pack(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
    for (int i = 0; i < D / 8; i += 2) {
      uint32_t bv[4];
      const int mi = lane / 8, row = kk * 16 + (mi % 2) * 8 + lane % 8, col = i * 8 + (mi / 2) * 8;
      ptx::ldmatrix_x4_trans(bv, sV + row * kRow + col);
      Atom::mma(o[i], a, bv);
      Atom::mma(o[i + 1], a, bv + 2);
    }
  }
}

// ---- the iteration / mask policy -----------------------------------------------------------------------------------
// One view of a (sequence, query head): a residue class of the head's dilation (view query u = query first + u·d,
// view key t = key r + t·d, an undilated band over them), the head's global query rows (gathered by position, every
// key visible), or — grouped-query packing, `group` G > 1 — the G query heads of one key/value head side by side
// (view query u is query u / G of head head0 + u % G). Mirrors SlidingWindowPolicy / ResidueClass of
// csrc/common/band_policy.h.
struct ViewPolicy {
  int n_queries, n_keys;
  int first_query, dilation, residue;
  int offset;  // view key position of view query 0
  int left, right;
  int group, head0;
  bool global_rows;
  const int32_t* global_pos;  // global rows: the positions; residue views: the batch's global keys
  int n_global;

  __device__ int query_pos(int u) const { return global_rows ? global_pos[u] : first_query + (u / group) * dilation; }
  __device__ int query_head(int u) const { return head0 + u % group; }
  __device__ int lo(int u) const { return left < 0 ? 0 : max(0, u / group + offset - left); }
  __device__ int hi(int u) const { return right < 0 ? n_keys - 1 : min(n_keys - 1, u / group + offset + right); }
  __device__ bool in_band(int u, int t) const { return t >= lo(u) && t <= hi(u) && t < n_keys; }
};

// hz: the query head, or with packing the key/value head.
__device__ __forceinline__ ViewPolicy make_view(const FlashFwdParams& p, const SequenceRows& seq, int b, int hz,
                                                int slot) {
  ViewPolicy v{};
  const bool has_global = p.global_index != nullptr;
  v.group = p.group;
  v.head0 = p.group > 1 ? hz * p.group : hz;
  if (slot == p.residue_slots) {  // the head's global query rows: dense over every key
    v.global_rows = true;
    v.global_pos = p.global_index + int64_t(b) * p.seqlen_k;
    v.n_queries = has_global ? p.global_count[b] : 0;
    v.n_keys = seq.n_k;
    v.dilation = 1;
    v.left = v.right = -1;
    v.n_global = 0;
    return v;
  }
  const int d = p.group > 1 ? 1 : (p.uniform_dilation > 0 ? p.uniform_dilation : p.dilation[hz]);
  const int offset = seq.n_k - seq.n_q;
  v.global_rows = false;
  v.dilation = d;
  if (slot >= min(d, seq.n_q)) {  // no such class for this head (or an empty sequence)
    v.n_queries = 0;
    return v;
  }
  // Class `slot` starts at query i = slot (the first min(d, Sq) queries start one class each).
  const int r = ((slot + offset) % d + d) % d;
  v.residue = r;
  v.first_query = slot;
  v.n_queries = ((seq.n_q - 1 - slot) / d + 1) * p.group;
  v.n_keys = r < seq.n_k ? (seq.n_k - 1 - r) / d + 1 : 0;
  v.offset = (slot + offset - r) / d;
  v.left = p.window_left;
  v.right = p.window_right;
  v.global_pos = has_global ? p.global_index + int64_t(b) * p.seqlen_k : nullptr;
  v.n_global = has_global ? p.global_count[b] : 0;
  return v;
}

// ---- the kernel ----------------------------------------------------------------------------------------------------
// grid: x = query tiles of the view (the block loops over x, x + gridDim.x, ...: a small grid costs speed, never
// rows), y = residue class slot - slot_base (slot residue_slots: the global rows, launched on their own) or the key
// split, z = batch * heads_q / group.
template <typename Elem, int D>
__global__ void __launch_bounds__(kThreads) flash_fwd_kernel(const __grid_constant__ FlashFwdParams p) {
  static_assert(D % 16 == 0 && D <= 256, "head dim: a multiple of 16 up to 256");
  constexpr int kRow = smem_row<D>();
  constexpr int kDTiles = D / 8;     // n-tiles of O
  LONGATTN_DYNAMIC_SHARED(unsigned char, smem_raw);
  Elem* sQ = reinterpret_cast<Elem*>(smem_raw);  // (64, kRow)
  Elem* sK = sQ + kBlockM * kRow;                 // (64, kRow)
  Elem* sV = sK + kBlockN * kRow;                 // (64, kRow)

  const int heads_z = p.heads_q / p.group;
  const int b = blockIdx.z / heads_z, hz = blockIdx.z % heads_z;
  const int hk = p.group > 1 ? hz : hz / p.kv_group;
  const SequenceRows seq = sequence_rows(p, b);
  const bool split = p.n_splits > 1;
  const int split_idx = split ? int(blockIdx.y) : 0;
  const ViewPolicy view = make_view(p, seq, b, hz, split ? 0 : p.slot_base + int(blockIdx.y));
  const int key_lo = split ? split_idx * p.split_chunk : 0;
  const int key_hi = split ? min(view.n_keys, key_lo + p.split_chunk) : view.n_keys;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, tig = lane % 4;  // fragment row group and thread-in-group
  const Elem* q_all = static_cast<const Elem*>(p.q);
  const Elem* k_all = static_cast<const Elem*>(p.k);
  const Elem* v_all = static_cast<const Elem*>(p.v);

  const auto load_tile = [&](Elem* dst, const Elem* base, auto offset_of) {
    load_tile_async<Elem, D>(dst, base, offset_of, tid);
  };

  for (int u0 = blockIdx.x * kBlockM; u0 < view.n_queries; u0 += gridDim.x * kBlockM) {
    const int nq = min(kBlockM, view.n_queries - u0);
    __syncthreads();  // the previous tile's reads of sQ are done

    // Q tile, the view's rows
    load_tile(sQ, q_all, [&](int row) -> int64_t {
      if (row >= nq) return -1;
      const int u = u0 + row;
      return q_offset(p, seq, b, view.query_head(u), view.query_pos(u));
    });
    ptx::cp_async_commit();

    float o[kDTiles][4];
#pragma unroll
    for (int i = 0; i < kDTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m_row[2] = {-INFINITY, -INFINITY}, l_row[2] = {0.0f, 0.0f};
    const int ur[2] = {u0 + warp * 16 + g, u0 + warp * 16 + g + 8};  // the view queries of this thread's rows

    // The band's key tiles (within the split), then (residue views with global tokens) the global-key tiles.
    const int t_begin = max(view.lo(u0), key_lo);
    const int t_end = max(t_begin, min(key_hi, view.hi(u0 + nq - 1) + 1));
    const int n_band_tiles = (t_end - t_begin + kBlockN - 1) / kBlockN;
    const int n_global_tiles = view.global_rows ? 0 : (view.n_global + kBlockN - 1) / kBlockN;

    for (int tile = 0; tile < n_band_tiles + n_global_tiles; ++tile) {
      const bool global_tile = tile >= n_band_tiles;
      const int j0 = global_tile ? (tile - n_band_tiles) * kBlockN : t_begin + tile * kBlockN;
      // key position of tile row `row`, or -1 (outside the view)
      auto key_pos = [&](int row) -> int {
        if (global_tile) return j0 + row < view.n_global ? view.global_pos[j0 + row] : -1;
        const int t = j0 + row;
        return t < t_end ? view.residue + t * view.dilation : -1;
      };
      // Key padding: a tile of padding only is skipped (the whole block agrees).
      if (p.kpm && !__syncthreads_or(tid < kBlockN && key_pos(tid) >= 0 && key_is_real(p, b, key_pos(tid)))) continue;
      auto kv_rows = [&](int64_t batch_stride, int64_t seq_stride, int64_t head_stride) {
        return [&, batch_stride, seq_stride, head_stride](int row) -> int64_t {
          const int pos = key_pos(row);
          return pos < 0 ? -1 : kv_offset(p, seq, b, hk, pos, batch_stride, seq_stride, head_stride);
        };
      };
      load_tile(sK, k_all, kv_rows(p.k_batch, p.k_seq, p.k_head));
      ptx::cp_async_commit();
      ptx::cp_async_wait_group<0>();
      __syncthreads();
      load_tile(sV, v_all, kv_rows(p.v_batch, p.v_seq, p.v_head));  // overlaps with S = Q·Kᵀ and the softmax
      ptx::cp_async_commit();

      // S (16, 64) = Q (16, D) · Kᵀ for this warp's rows
      float s[8][4];
      warp_scores<Elem, D>(s, sQ, sK, warp, lane);

      // Scale to log2 units (soft-capped: softcap·log2(e)·tanh(s·scale / softcap)) and mask. Element (row, col) of
      // n-tile n: row ur[e / 2], key j0 + 8n + 2 tig + e % 2.
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int u = ur[e / 2], col = j0 + n * 8 + tig * 2 + (e % 2);
          bool visible;
          int pos;
          if (global_tile) {
            // a global key the window already counted is masked here, so it counts once
            const int idx = col;
            if (idx >= view.n_global) {
              visible = false;
              pos = -1;
            } else {
              pos = view.global_pos[idx];
              const bool in_class = pos % view.dilation == view.residue;
              visible = !(in_class && view.in_band(u, (pos - view.residue) / view.dilation));
            }
          } else {
            visible = col < t_end && view.in_band(u, col);
            pos = view.residue + col * view.dilation;
          }
          visible = visible && u < view.n_queries && (!p.kpm || key_is_real(p, b, pos));
          const float x = p.softcap2 > 0.0f ? p.softcap2 * tanhf(s[n][e] * p.softcap_scale) : s[n][e] * p.scale_log2;
          s[n][e] = visible ? x : -INFINITY;
        }

      online_softmax_update<kDTiles>(s, m_row, l_row, o);

      ptx::cp_async_wait_group<0>();
      __syncthreads();
      warp_pv<Elem, D>(o, s, sV, lane);  // O (16, D) += P (16, 64) · V (64, D)
      __syncthreads();  // sK and sV are overwritten by the next tile
    }

    ptx::cp_async_wait_group<0>();  // a tile with no key tile still has its Q copy in flight
    // Epilogue: out = O / l, lse = ln2 · (m + log2 l), a sink joining the denominator (lse_merge_weights); a row that
    // saw nothing is exactly 0, even if a tile it shared put 0·Inf = NaN into its O (P·V of a masked key). A global
    // query's row is written by its global-rows view, not by its residue class. With key splits: the normalised
    // partial (o, lse) of this split, merged afterwards.
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      const int u = ur[rr];
      if (u >= view.n_queries) continue;
      const int i = view.query_pos(u), h = view.query_head(u);
      if (!view.global_rows && p.global_tokens && p.global_tokens[b * p.global_batch + i * p.global_seq]) continue;
      const float lse_part = l_row[rr] == 0.0f ? -INFINITY : 0.6931471805599453f * (m_row[rr] + log2f(l_row[rr]));
      if (split) {
        const int64_t prow = ((int64_t(split_idx) * p.batch + b) * p.heads_q + h) * p.seqlen_q + i;
        const float inv = l_row[rr] == 0.0f ? 0.0f : 1.0f / l_row[rr];
        float* dst = p.partial_o + prow * p.head_dim_v;
#pragma unroll
        for (int n = 0; n < kDTiles; ++n) {
          dst[n * 8 + tig * 2] = o[n][2 * rr] * inv;
          dst[n * 8 + tig * 2 + 1] = o[n][2 * rr + 1] * inv;
        }
        if (tig == 0) p.partial_lse[prow] = lse_part;
        continue;
      }
      float weight = l_row[rr] == 0.0f ? 0.0f : 1.0f, lse = lse_part;
      if (p.sinks) lse = lse_merge_weights(&lse_part, 1, true, p.sinks[h], [&](int, float w) { weight = w; });
      const bool empty = weight == 0.0f;
      const float inv = empty ? 0.0f : weight / l_row[rr];
      Elem* row = static_cast<Elem*>(p.out) + o_offset(p, seq, b, h, i);
#pragma unroll
      for (int n = 0; n < kDTiles; ++n)
        MmaAtom<Elem>::store2(row + n * 8 + tig * 2, empty ? 0.0f : o[n][2 * rr] * inv, empty ? 0.0f : o[n][2 * rr + 1] * inv);
      if (p.lse && tig == 0) p.lse[lse_offset(p, seq, b, h, i)] = lse;
    }
  }
}

// Host side: launches flash_fwd_kernel<Elem, D> on `stream`. Defined in one .cu per (Elem, D).
template <typename Elem, int D>
cudaError_t launch_flash_fwd(const FlashFwdParams& p, dim3 grid, void* stream);

}  // namespace longattn::LONGATTN_CUDA_NS
