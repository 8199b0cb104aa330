#include "work_plan.h"

#include <algorithm>

#include "band_policy.h"

namespace longattn::cpu {

namespace {

// Grouped-query packing needs every head of a group to see the same keys: no per-head dilation, no global tokens.
int64_t packing_group(const AttentionParams& p) {
  const int64_t g = p.heads_q / p.heads_k;
  if (g <= 1 || p.global_tokens) return 1;
  for (int64_t h = 0; p.dilation && h < p.heads_q; ++h)
    if (p.dilation[h] != 1) return 1;
  return g;
}

}  // namespace

SequenceRows CallPlan::sequence(int64_t b) const {
  SequenceRows s;
  if (p.cu_seqlens_q) {
    s.q_first = p.cu_seqlens_q[b];
    s.k_first = p.cu_seqlens_k[b];
    s.n_q = p.cu_seqlens_q[b + 1] - s.q_first;
    s.n_k = p.cu_seqlens_k[b + 1] - s.k_first;
  } else if (p.cache_seqlens) {
    s.n_q = p.seqlen_q;
    s.n_k = std::min<int64_t>(p.seqlen_k, int64_t(p.cache_seqlens[b]) + p.seqlen_new);  // checked: <= capacity
  } else {
    s.n_q = p.seqlen_q;
    s.n_k = p.seqlen_k;
  }
  return s;
}

int choose_splits(const AttentionParams& p, int64_t group, int64_t queries_per_group, int num_threads) {
  if (!p.cache_seqlens) return 1;
  if (p.num_splits > 0) return p.num_splits;
  // Enough items for every thread (twice over, for balance), pieces of at least 512 keys.
  int64_t items = 0, longest = 0;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t n_k = std::min<int64_t>(p.seqlen_k, int64_t(p.cache_seqlens[b]) + p.seqlen_new);
    longest = std::max(longest, n_k);
    items += (p.heads_q / group) * ((p.seqlen_q * group + queries_per_group - 1) / queries_per_group);
  }
  const int64_t want = 2 * int64_t(num_threads);
  if (items >= want) return 1;
  return int(std::clamp<int64_t>((want + items - 1) / items, 1, std::max<int64_t>(1, std::min<int64_t>(64, longest / 512))));
}

CallPlan::CallPlan(const AttentionParams& params, int64_t queries_per_group, int num_threads, int decode_columns)
    : p(params) {
  group = packing_group(p);
  // Decode: every head of a group sees the same keys (no dilation, no global tokens) and the (query, head) pairs of
  // a key/value head fit the decode path.
  const int64_t g = p.heads_q / p.heads_k;
  decode = decode_columns > 0 && (group > 1 || g == 1) && !p.global_tokens && p.seqlen_q * g <= decode_columns;
  for (int64_t h = 0; decode && p.dilation && h < p.heads_q; ++h) decode = p.dilation[h] == 1;
  if (decode) {
    plan_decode(num_threads);
    return;
  }
  splits = choose_splits(p, group, queries_per_group, num_threads);
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
  const int64_t heads = p.heads_q / group;  // views per sequence (before dilation)
  int64_t total_groups = 0;
  for (int64_t b = 0; b < p.batch; ++b) total_groups += heads * groups(sequence(b).n_q * group);
  const int64_t chain = bounded ? std::clamp<int64_t>(total_groups / (4 * int64_t(num_threads)), 1, 16) : 1;
  const auto add_items = [&](int64_t b, int64_t h, int64_t residue, int64_t n_queries, int64_t per_item) {
    for (int64_t first = 0; first < n_queries; first += per_item)
      items.push_back({int32_t(b), int32_t(h), residue, first, std::min(n_queries, first + per_item)});
  };

  // Items of one head are adjacent, in query order, so neighbouring items share key rows in cache.
  for (int64_t b = 0; b < p.batch; ++b) {
    const SequenceRows seq = sequence(b);
    if (seq.n_q == 0) continue;
    if (splits > 1) {
      // Key splits on 64-key boundaries, the same for every thread count: [s·chunk, (s + 1)·chunk).
      const int64_t chunk = std::max<int64_t>(64, (seq.n_k + 64 * splits - 1) / (64 * splits) * 64);
      for (int64_t h = 0; h < heads; ++h)
        for (int s = 0; s < splits; ++s)
          for (int64_t first = 0; first < seq.n_q * group; first += queries_per_group) {
            WorkItem it{int32_t(b), int32_t(h), 0, first, std::min(seq.n_q * group, first + queries_per_group)};
            it.split = s;
            it.key_lo = s * chunk;
            it.key_hi = (s + 1) * chunk;
            items.push_back(it);
          }
      continue;
    }
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t d = group > 1 ? 1 : dilation(h);
      // Class r holds the queries with (i + offset) ≡ r (mod d): the first min(d, Sq) queries start one class each,
      // so a dilation larger than the sequence costs no empty classes.
      const int64_t offset = seq.n_k - seq.n_q;
      for (int64_t i = 0; i < std::min(d, seq.n_q); ++i) {
        const int64_t r = ((i + offset) % d + d) % d;
        add_items(b, h, r, ResidueClass(seq.n_q, seq.n_k, d, r).num_queries * group, chain * queries_per_group);
      }
      if (has_global()) add_items(b, h, kGlobalRows, global_begin[b + 1] - global_begin[b], queries_per_group);
    }
  }
}

void CallPlan::plan_decode(int num_threads) {
  // Items: (sequence, a range of kv heads, a key split). Enough of them for every thread, twice over: key splits
  // first for a KV cache (num_splits, or chosen here for 0), then kv heads cut into ranges. Neither changes a
  // result bit except the number of splits.
  const int64_t want = 2 * int64_t(num_threads), per_seq = std::max<int64_t>(1, (want + p.batch - 1) / p.batch);
  int64_t longest = 0;
  for (int64_t b = 0; b < p.batch; ++b) longest = std::max(longest, sequence(b).n_k);
  splits = 1;
  if (p.cache_seqlens)
    splits = p.num_splits > 0 ? p.num_splits
                              : int(std::clamp<int64_t>(per_seq, 1, std::max<int64_t>(1, std::min<int64_t>(64, longest / 512))));
  const int64_t head_ranges = std::clamp<int64_t>((per_seq + splits - 1) / splits, 1, p.heads_k);
  for (int64_t b = 0; b < p.batch; ++b) {
    const SequenceRows seq = sequence(b);
    if (seq.n_q == 0) continue;
    const int64_t chunk = std::max<int64_t>(64, (seq.n_k + 64 * splits - 1) / (64 * splits) * 64);
    for (int64_t r = 0; r < head_ranges; ++r)
      for (int s = 0; s < splits; ++s) {
        WorkItem it;
        it.batch = int32_t(b);
        it.head = int32_t(p.heads_k * r / head_ranges);
        it.head_end = int32_t(p.heads_k * (r + 1) / head_ranges);
        it.split = s;
        if (splits > 1) it.key_lo = s * chunk, it.key_hi = (s + 1) * chunk;
        items.push_back(it);
      }
  }
}

}  // namespace longattn::cpu
