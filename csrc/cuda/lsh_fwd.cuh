// Chunked LSH attention on tensor cores (docs/semantics.md, lsh_attention steps 4-7): flash_fwd.cuh's tile loop
// (warp_scores, online_softmax_update, warp_pv) under the LSH iteration/mask policy. The rows of a tile are gathered
// in sorted order through the positions lsh_sort_kernel wrote; masks compare original positions.
//
// Block = 4 warps, a tile of kBlockM = 64 sorted queries of one chunk (a chunk longer than 64 has several tiles);
// its keys are the chunks c - before .. c + after (cyclic over all rounds' chunks), 64 sorted keys per tile.
// Shared memory, the dense kernel's, no more: its rows are padded by 8 elements (16 bytes) that neither cp.async nor
// ldmatrix touches, and the rows' metadata lives there (so head dim 256 still fits sm86/sm89's 99 KiB per block):
//   sQ (64, D + 8), sK (64, D + 8), sV (64, D + 8)                             [Elem]   (dynamic)
//   sQ row padding: the query's original position (int32; -1: no row)
//   sK row padding: the key's original position (int32; -1: no row), its norm · log2 e (float), padding (int32)
#pragma once

#include "flash_fwd.cuh"
#include "lsh_params.h"

namespace longattn::LONGATTN_CUDA_NS {

// grid: x = query tiles over every round's chunks (rounds · chunks_per_round · ceil(chunk / 64); the block loops over
// x, x + gridDim.x, ...), y = batch · heads.
template <typename Elem, int D>
__global__ void __launch_bounds__(kThreads) lsh_chunk_fwd_kernel(const __grid_constant__ LshFwdParams p) {
  constexpr int kRow = smem_row<D>();
  constexpr int kDTiles = D / 8;
  LONGATTN_DYNAMIC_SHARED(unsigned char, smem_raw);
  Elem* sQ = reinterpret_cast<Elem*>(smem_raw);  // (64, kRow)
  Elem* sK = sQ + kBlockM * kRow;                 // (64, kRow)
  Elem* sV = sK + kBlockN * kRow;                 // (64, kRow)
  // the metadata in the row padding: 4-byte words at element D of each row (a 16-byte aligned address)
  const auto meta = [](Elem* tile, int row) { return reinterpret_cast<int32_t*>(tile + row * kRow + D); };
  const auto q_pos = [&](int row) -> int32_t& { return meta(sQ, row)[0]; };
  const auto k_pos = [&](int row) -> int32_t& { return meta(sK, row)[0]; };
  const auto k_scale = [&](int row) -> float& { return reinterpret_cast<float*>(meta(sK, row))[1]; };
  const auto k_pad = [&](int row) -> int32_t& { return meta(sK, row)[2]; };

  const int b = blockIdx.y / p.heads, h = blockIdx.y % p.heads;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, tig = lane % 4;  // fragment row group and thread-in-group
  const Elem* qk = static_cast<const Elem*>(p.qk) + int64_t(b) * p.qk_batch + int64_t(h) * p.qk_head;
  const Elem* vh = static_cast<const Elem*>(p.v) + int64_t(b) * p.v_batch + int64_t(h) * p.v_head;
  const float* key_scale = p.key_scale + (int64_t(b) * p.heads + h) * p.seqlen;
  const int sub_tiles = (p.chunk + kBlockM - 1) / kBlockM;
  const int64_t n_tiles = int64_t(p.rounds) * p.chunks_per_round * sub_tiles;

  for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const int64_t chunk = tile / sub_tiles;
    const int q0 = int(tile % sub_tiles) * kBlockM, nq = min(kBlockM, p.chunk - q0);
    __syncthreads();  // the previous tile's reads of sQ and q_pos are done
    if (tid < kBlockM) q_pos(tid) = tid < nq ? lsh_sorted_pos(p, b, h, chunk * p.chunk + q0 + tid) : -1;
    __syncthreads();
    load_tile_async<Elem, D>(sQ, qk, [&](int row) -> int64_t {
      return q_pos(row) < 0 ? -1 : int64_t(q_pos(row)) * p.qk_seq;
    }, tid);
    ptx::cp_async_commit();

    float o[kDTiles][4];
#pragma unroll
    for (int i = 0; i < kDTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m_row[2] = {-INFINITY, -INFINITY}, l_row[2] = {0.0f, 0.0f};
    const int qr[2] = {q_pos(warp * 16 + g), q_pos(warp * 16 + g + 8)};  // this thread's rows' positions

    for (int u = -p.before; u <= p.after; ++u) {
      const int64_t first = lsh_chunk_start(p, chunk + u);
      for (int k0 = 0; k0 < p.chunk; k0 += kBlockN) {
        const int nk = min(kBlockN, p.chunk - k0);
        // (the previous key tile ended with a barrier: its reads of the key rows' metadata are done)
        if (tid < kBlockN) {
          const int pos = tid < nk ? lsh_sorted_pos(p, b, h, first + k0 + tid) : -1;
          k_pos(tid) = pos;
          k_scale(tid) = pos < 0 ? 0.0f : key_scale[pos] * kLog2e;
          k_pad(tid) = pos >= 0 && lsh_is_padding(p, b, pos);
        }
        __syncthreads();
        load_tile_async<Elem, D>(sK, qk, [&](int row) -> int64_t {
          return k_pos(row) < 0 ? -1 : int64_t(k_pos(row)) * p.qk_seq;
        }, tid);
        ptx::cp_async_commit();
        ptx::cp_async_wait_group<0>();
        __syncthreads();
        load_tile_async<Elem, D>(sV, vh, [&](int row) -> int64_t {  // overlaps with S = Q·Kᵀ and the softmax
          return k_pos(row) < 0 ? -1 : int64_t(k_pos(row)) * p.v_seq;
        }, tid);
        ptx::cp_async_commit();

        float s[8][4];  // S (16, 64) = Q (16, D) · Kᵀ for this warp's rows
        warp_scores<Elem, D>(s, sQ, sK, warp, lane);
        // The LSH rule per element (row qr[e / 2], key column 8n + 2 tig + e % 2); a column past the chunk's rows is
        // not a key (-inf).
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int col = n * 8 + tig * 2 + (e % 2), kp = k_pos(col);
            s[n][e] = kp < 0 ? -INFINITY : lsh_score(s[n][e], k_scale(col), qr[e / 2], kp, k_pad(col) != 0, p.causal);
          }
        online_softmax_update<kDTiles>(s, m_row, l_row, o);
        ptx::cp_async_wait_group<0>();
        __syncthreads();
        warp_pv<Elem, D>(o, s, sV, lane);  // O (16, D) += P (16, 64) · V (64, D)
        __syncthreads();  // sK, sV and the key metadata are overwritten by the next tile
      }
    }

    ptx::cp_async_wait_group<0>();
    // Epilogue: o / l and lse = ln2 · (m + log2 l) of each real row (l >= 1: scores are replaced, never -inf, and a
    // chunk holds its own queries) to the output (one round), or o / l, m and l to the round's partials at the
    // original position.
    const int r = int(chunk / p.chunks_per_round);
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      const int pos = qr[rr];
      if (pos < 0) continue;
      const float inv = 1.0f / l_row[rr];
      if (p.rounds > 1) {
        const int64_t prow = lsh_partial_row(p, r, b, h, pos);
        float* dst = p.partial_o + prow * p.head_dim_v;
#pragma unroll
        for (int n = 0; n < kDTiles; ++n) {
          dst[n * 8 + tig * 2] = o[n][2 * rr] * inv;
          dst[n * 8 + tig * 2 + 1] = o[n][2 * rr + 1] * inv;
        }
        if (tig == 0) p.partial_ml[2 * prow] = m_row[rr], p.partial_ml[2 * prow + 1] = l_row[rr];
        continue;
      }
      Elem* row = static_cast<Elem*>(p.out) + int64_t(b) * p.o_batch + int64_t(pos) * p.o_seq + int64_t(h) * p.o_head;
#pragma unroll
      for (int n = 0; n < kDTiles; ++n) MmaAtom<Elem>::store2(row + n * 8 + tig * 2, o[n][2 * rr] * inv, o[n][2 * rr + 1] * inv);
      if (p.lse && tig == 0)
        p.lse[int64_t(b) * p.lse_batch + int64_t(h) * p.lse_head + pos] =
            0.6931471805599453f * (m_row[rr] + log2f(l_row[rr]));
    }
  }
}

// Host side (declared in lsh_params.h); each csrc/cuda/inst/lsh_fwd_*.cu instantiates it for one (dtype, head dim).
template <typename Elem, int D>
cudaError_t launch_lsh_chunk_fwd(const LshFwdParams& p, dim3 grid, void* stream) {
  constexpr int smem = smem_bytes<D>();
  if (smem > 48 * 1024) {  // more than 48 KiB of dynamic shared memory must be asked for (see flash_fwd_launch.cuh)
    const cudaError_t e =
        cudaFuncSetAttribute(lsh_chunk_fwd_kernel<Elem, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
  }
  return launch<lsh_chunk_fwd_kernel<Elem, D>>(grid, dim3(kThreads), smem, stream, p);
}

}  // namespace longattn::LONGATTN_CUDA_NS
