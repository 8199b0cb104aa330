// What the work items of one LSH attention call share (SPEC §3), built once per call by lsh.cpp.
//
// Phases, each a parallel loop over independent items:
//   1. hash     (batch, head, block of tokens): buckets of every round (skipped when buckets are given)
//   2. sort     (batch, head, round): a stable counting sort of the round's buckets -> sorted positions
//   3. attend   (batch, head, run of consecutive chunks of the sorted sequence): chunked attention, per-round
//               output and log-sum-exp written back at the tokens' original positions
//   4. combine  (batch, head, block of tokens): rounds weighted by their log-sum-exps -> out, lse
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
  int64_t n_chunks = 0;           // chunks of one (batch, head): rounds * seqlen / chunk
  int64_t chunks_per_item = 1;    // attend phase: consecutive chunks share packed rows
  int64_t tokens_per_item = 512;  // hash and combine phases

  // Scratch, owned by the call (B batch, H heads, S seqlen, R rounds); items write disjoint parts of it.
  mutable std::vector<int32_t> buckets;    // (B, H, n_hashes, S): hashed, or a copy of buckets_in
  mutable std::vector<int32_t> sorted_pos; // (B, H, R * S): original position of each sorted item
  std::vector<float> rotations_t;          // (H, n_hashes, n_buckets / 2, head_dim): rotations, transposed
  mutable std::vector<float> round_out;    // (B, H, R, S, head_dim_v): each round's output at original positions
  mutable std::vector<float> round_lse;    // (B, H, R, S): each round's log-sum-exp (natural log)

  int32_t* buckets_at(int64_t b, int64_t h, int64_t r) const {
    return buckets.data() + ((b * p.heads + h) * p.n_hashes + r) * p.seqlen;
  }
  int32_t* sorted_at(int64_t b, int64_t h) const { return sorted_pos.data() + (b * p.heads + h) * rounds * p.seqlen; }
  float* round_out_at(int64_t b, int64_t h, int64_t r) const {
    return round_out.data() + ((b * p.heads + h) * rounds + r) * p.seqlen * p.head_dim_v;
  }
  float* round_lse_at(int64_t b, int64_t h, int64_t r) const {
    return round_lse.data() + ((b * p.heads + h) * rounds + r) * p.seqlen;
  }

  explicit LshPlan(const LshAttentionParams& params) : p(params) {}

  int64_t hash_items() const { return p.batch * p.heads * blocks_of(p.seqlen, tokens_per_item); }
  int64_t attend_items() const { return p.batch * p.heads * blocks_of(n_chunks, chunks_per_item); }
  int64_t combine_items() const { return hash_items(); }
  static int64_t blocks_of(int64_t n, int64_t per) { return (n + per - 1) / per; }
};

}  // namespace longattn::cpu
