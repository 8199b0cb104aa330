#include "work_plan.h"

#include <algorithm>

#include "band_policy.h"

namespace longattn::cpu {

CallPlan::CallPlan(const AttentionParams& params, int64_t queries_per_group, int num_threads) : p(params) {
  const auto groups = [&](int64_t n) { return (n + queries_per_group - 1) / queries_per_group; };
  if (has_global()) {
    global_begin.assign(p.batch + 1, 0);
    for (int64_t b = 0; b < p.batch; ++b) {
      for (int64_t i = 0; i < p.seqlen_k; ++i)
        if (is_global(b, i)) global_index.push_back(i);
      global_begin[b + 1] = int64_t(global_index.size());
    }
  }
  // Chain length: neighbouring groups of a bounded band share keys, so longer items pack fewer tiles twice; keep
  // at least 4 items per thread for the dynamic scheduler to balance. Dense rows (and global rows) share nothing
  // that fits the tile cache, so they stay one group per item. Chaining does not change any result bit.
  const bool bounded = p.window_left >= 0 && (p.window_right >= 0 || p.causal);
  int64_t total_groups = 0;
  for (int64_t h = 0; h < p.heads_q; ++h) total_groups += groups(p.seqlen_q);  // dilation: about the same
  total_groups *= p.batch;
  const int64_t chain = bounded ? std::clamp<int64_t>(total_groups / (4 * int64_t(num_threads)), 1, 16) : 1;
  const auto add_items = [&](int64_t b, int64_t h, int64_t residue, int64_t n_queries, int64_t per_item) {
    for (int64_t first = 0; first < n_queries; first += per_item)
      items.push_back({int32_t(b), int32_t(h), residue, first, std::min(n_queries, first + per_item)});
  };

  // Items of one head are adjacent, in query order, so neighbouring items share key rows in cache.
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads_q; ++h) {
      const int64_t d = dilation(h);
      // Class r holds the queries with (i + offset) ≡ r (mod d): the first min(d, Sq) queries start one class each,
      // so a dilation larger than the sequence costs no empty classes.
      const int64_t offset = p.seqlen_k - p.seqlen_q;
      for (int64_t i = 0; i < std::min(d, p.seqlen_q); ++i) {
        const int64_t r = ((i + offset) % d + d) % d;
        add_items(b, h, r, ResidueClass(p.seqlen_q, p.seqlen_k, d, r).num_queries, chain * queries_per_group);
      }
      if (has_global()) add_items(b, h, kGlobalRows, global_begin[b + 1] - global_begin[b], queries_per_group);
    }
}

}  // namespace longattn::cpu
