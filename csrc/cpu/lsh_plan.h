// What the work items of one LSH attention call share (docs/semantics.md), built once per call by lsh.cpp.
//
// Phases, each a parallel loop over independent items:
//   1. hash     (batch, head, block of tokens): each key's normalisation; buckets of every round (unless given)
//   2. sort     (batch, head, round): a stable counting sort of the round's buckets -> sorted positions
//   3. attend   (batch, head, run of consecutive chunks of round r): chunked attention; each token's result is
//               folded into a running combination of the rounds at its original position (every token is in
//               exactly one chunk of a round, so no two items of a round touch the same token), and the last round
//               writes out and lse. The rounds of one head run in order: either one parallel loop per round, or,
//               with enough heads for the threads, one loop over heads, each running its rounds one after another
//               (a head's rows then stay in cache from round to round instead of every head being streamed from
//               memory once per round).
#pragma once

#include <cstdint>
#include <vector>

#include "longattn/longattn.h"

namespace longattn::cpu {

struct LshPlan {
  const LshAttentionParams& p;
  int64_t rounds = 1;   // n_hashes, or 1 when seqlen <= chunk_length (no hashing)
  int64_t chunk = 1;    // chunk_length, or seqlen when seqlen <= chunk_length
  int64_t before = 0;   // adjacent chunks attended (0, 0 when seqlen <= chunk_length)
  int64_t after = 0;
  int64_t chunks_per_round = 0;   // seqlen / chunk
  int64_t chunks_per_item = 1;    // attend phase: consecutive chunks share gathered rows
  int64_t tokens_per_item = 512;  // hash phase
  bool hash = true;               // phase 1 hashes (else the buckets were given and it only normalises keys)

  // Scratch, owned by the call (B batch, H heads, S seqlen, R rounds); items write disjoint parts of it.
  mutable std::vector<int32_t> buckets;    // (B, H, n_hashes, S): hashed, or a copy of buckets_in
  mutable std::vector<int32_t> sorted_pos; // (B, H, R * S): original position of each sorted item
  std::vector<float> rotations_t;          // (H, n_hashes, n_buckets / 2, head_dim): rotations, transposed
  mutable std::vector<float> key_scale;    // (B, H, S): rsqrt(mean(qk²) + 1e-6) / sqrt(D) of each token
  // The running combination of the rounds so far (only when R > 1), per token at its original position:
  // in log2 units, acc = Σ_r 2^(m_r - acc_max) · o_r (unnormalised), acc_sum = Σ_r 2^(m_r - acc_max) · l_r.
  mutable std::vector<float> acc;          // (B, H, S, acc_stride()): acc (head_dim_v), acc_max, acc_sum, padding
  int64_t acc_stride() const { return (p.head_dim_v + 2 + 15) / 16 * 16; }  // whole cache lines per token

  int32_t* buckets_at(int64_t b, int64_t h, int64_t r) const {
    return buckets.data() + ((b * p.heads + h) * p.n_hashes + r) * p.seqlen;
  }
  float* key_scale_at(int64_t b, int64_t h) const { return key_scale.data() + (b * p.heads + h) * p.seqlen; }
  int32_t* sorted_at(int64_t b, int64_t h) const { return sorted_pos.data() + (b * p.heads + h) * rounds * p.seqlen; }

  explicit LshPlan(const LshAttentionParams& params) : p(params) {}

  int64_t hash_items() const { return p.batch * p.heads * blocks_of(p.seqlen, tokens_per_item); }
  int64_t n_chunks() const { return rounds * chunks_per_round; }  // chunks of one (batch, head), all rounds
  int64_t attend_items() const { return p.batch * p.heads * blocks_of(chunks_per_round, chunks_per_item); }
  static int64_t blocks_of(int64_t n, int64_t per) { return (n + per - 1) / per; }
};

}  // namespace longattn::cpu
