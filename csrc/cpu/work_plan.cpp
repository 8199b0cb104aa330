#include "work_plan.h"

#include <algorithm>

#include "band_policy.h"

namespace longattn::cpu {

CallPlan::CallPlan(const AttentionParams& params, int64_t queries_per_item) : p(params) {
  const auto per_items = [&](int64_t n) { return (n + queries_per_item - 1) / queries_per_item; };
  if (has_global()) {
    global_begin.assign(p.batch + 1, 0);
    for (int64_t b = 0; b < p.batch; ++b) {
      for (int64_t i = 0; i < p.seqlen_k; ++i)
        if (is_global(b, i)) global_index.push_back(i);
      global_begin[b + 1] = int64_t(global_index.size());
    }
  }
  // Items of one head are adjacent, in query order, so neighbouring items share key rows in cache.
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads_q; ++h) {
      const int64_t d = dilation(h);
      // Class r holds the queries with (i + offset) ≡ r (mod d): the first min(d, Sq) queries start one class each,
      // so a dilation larger than the sequence costs no empty classes.
      const int64_t offset = p.seqlen_k - p.seqlen_q;
      for (int64_t i = 0; i < std::min(d, p.seqlen_q); ++i) {
        const int64_t r = ((i + offset) % d + d) % d;
        const ResidueClass rc(p.seqlen_q, p.seqlen_k, d, r);
        for (int64_t g = 0; g < per_items(rc.num_queries); ++g)
          items.push_back({int32_t(b), int32_t(h), r, g * queries_per_item});
      }
      if (has_global()) {
        const int64_t n_global = global_begin[b + 1] - global_begin[b];
        for (int64_t g = 0; g < per_items(n_global); ++g)
          items.push_back({int32_t(b), int32_t(h), kGlobalRows, g * queries_per_item});
      }
    }
}

}  // namespace longattn::cpu
