// LSH attention on the CPU (docs/semantics.md): builds the LshPlan and runs its phases on the thread pool. The hashing
// and attention kernels are per ISA (lsh_engine.h); the counting sort is plain C++ here.
#include <algorithm>
#include <string>

#include "cpu_backend.h"
#include "kernels.h"
#include "lsh_plan.h"
#include "thread_pool.h"

namespace longattn::cpu {

Status lsh_attention_forward(const LshAttentionParams& p) {
  const CpuKernelTable& k = active_kernels();
  ThreadPool& pool = ThreadPool::instance();
  const int64_t B = p.batch, H = p.heads, S = p.seqlen, NH = p.n_hashes;
  const int64_t columns = lsh_rotation_columns(p);
  LshPlan plan(p);
  const bool chunked = S > p.chunk_length;  // else: one round of ordinary attention, no hashing (step 9)
  plan.rounds = chunked ? NH : 1;
  plan.chunk = chunked ? p.chunk_length : S;
  plan.before = chunked ? p.chunks_before : 0;
  plan.after = chunked ? p.chunks_after : 0;
  plan.chunks_per_round = S / plan.chunk;
  const int64_t ws_floats = k.lsh_workspace_floats(plan);

  // Phase 1: key normalisation, and buckets, hashed or given.
  plan.key_scale.resize(B * H * S);
  plan.hash = !p.buckets_in && (chunked || p.buckets_out);
  if (chunked || p.buckets_out) plan.buckets.resize(B * H * NH * S);
  if (p.buckets_in && !plan.buckets.empty()) {
    for (int64_t i = 0; i < B * H * NH * S; ++i) {
      const int64_t x = p.buckets_in[i];
      if (x < 0 || x > p.n_buckets)
        return Status::Invalid("buckets: got the value " + std::to_string(x) + " at flat index " + std::to_string(i) +
                               ", expected 0.." + std::to_string(p.n_buckets) + " (n_buckets is the padding bucket)");
      plan.buckets[i] = int32_t(x);
    }
  }
  if (plan.hash) {
    // (H, D, NH, columns) -> (H, NH, columns, D): each rotation vector a contiguous row for the micro-kernel
    plan.rotations_t.resize(H * NH * columns * p.head_dim);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t d = 0; d < p.head_dim; ++d)
        for (int64_t r = 0; r < NH; ++r)
          for (int64_t j = 0; j < columns; ++j)
            plan.rotations_t[((h * NH + r) * columns + j) * p.head_dim + d] =
                p.rotations[((h * p.head_dim + d) * NH + r) * columns + j];
  }
  pool.parallel_for(plan.hash_items(), ws_floats, [&](int64_t item, float* ws) { k.lsh_hash_item(plan, item, ws); });
  if (p.buckets_out) std::copy(plan.buckets.begin(), plan.buckets.end(), p.buckets_out);

  // Phase 2: sort each round's (bucket, position) pairs: a stable counting sort, O(S + n_buckets).
  plan.sorted_pos.resize(B * H * plan.rounds * S);
  if (chunked) {
    pool.parallel_for(B * H * NH, 0, [&](int64_t item, float*) {
      const int64_t b = item / (H * NH), h = (item / NH) % H, r = item % NH;
      const int32_t* bucket = plan.buckets_at(b, h, r);
      int32_t* sorted = plan.sorted_at(b, h) + r * S;
      std::vector<int64_t> start(p.n_buckets + 2, 0);  // bucket x's items go to [start[x], start[x + 1])
      for (int64_t t = 0; t < S; ++t) ++start[bucket[t] + 1];
      for (int64_t x = 0; x <= p.n_buckets; ++x) start[x + 1] += start[x];
      for (int64_t t = 0; t < S; ++t) sorted[start[bucket[t]]++] = int32_t(t);  // ascending t: stable
    });
  } else {
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t t = 0; t < S; ++t) plan.sorted_pos[bh * S + t] = int32_t(t);
  }

  // Phase 3: chunked attention, round after round (each round folds into the running combination). Items chain
  // consecutive chunks (each chunk's rows are gathered once and reused by the chunks that look back at it),
  // keeping a few items per thread for balance.
  if (plan.rounds > 1) {
    plan.acc.resize(B * H * S * plan.acc_stride());
  }
  const int64_t threads = pool.num_threads();
  // Head-major when the heads spread evenly enough over the threads (at most 1 head in 4 of imbalance).
  if (plan.rounds > 1 && (B * H >= 4 * threads || (B * H >= threads && B * H % threads == 0))) {
    plan.chunks_per_item = std::clamp<int64_t>(plan.chunks_per_round, 1, 64);
    const int64_t per_head = LshPlan::blocks_of(plan.chunks_per_round, plan.chunks_per_item);
    pool.parallel_for(B * H, ws_floats, [&](int64_t bh, float* ws) {
      for (int64_t r = 0; r < plan.rounds; ++r)
        for (int64_t i = 0; i < per_head; ++i) k.lsh_attend_item(plan, r, bh * per_head + i, ws);
    });
  } else {
    plan.chunks_per_item = std::clamp<int64_t>(B * H * plan.chunks_per_round / (4 * threads), 1, 64);
    for (int64_t r = 0; r < plan.rounds; ++r)
      pool.parallel_for(plan.attend_items(), ws_floats,
                        [&](int64_t item, float* ws) { k.lsh_attend_item(plan, r, item, ws); });
  }
  return Status::Ok();
}

}  // namespace longattn::cpu
