// Which keys a query may attend, for dense, causal and sliding-window attention (docs/semantics.md).
//
// Query i sits at key position p(i) = i + offset (offset = seqlen_k - seqlen_q: bottom-right alignment) and may
// attend key j iff lo(i) <= j <= hi(i), with lo(i) = p(i) - left and hi(i) = p(i) + right, each clamped to
// [0, seqlen_k - 1]; a side given as -1 is unbounded. Dense is (-1, -1); causal is (-1, 0).
// The engine asks two questions: which key range a query tile touches (tile skipping), and whether a
// (query tile, key tile) block is wholly visible (then it takes the unmasked fast path).
//
// Dilation and global tokens are reduced to this undilated band by the engine: see ResidueClass below.
#pragma once

#include <algorithm>
#include <cstdint>

namespace longattn {

//
// Grouped-query packing: with `group` G > 1 the query index u counts (query, head) pairs of the G query heads that
// share one key/value head, query-major (u = G·i + g), so the G heads meet each key tile together; every rule
// below then applies to the query i = u / G.
struct SlidingWindowPolicy {
  int64_t seqlen_k = 0;
  int64_t offset = 0;  // key position of query 0
  int64_t left = -1;   // -1 = unbounded
  int64_t right = -1;
  int64_t group = 1;   // query heads packed per query (u = group·i + g)

  SlidingWindowPolicy(int64_t seqlen_k_, int64_t offset_, bool causal, int64_t window_left, int64_t window_right,
                      int64_t group_ = 1)
      : seqlen_k(seqlen_k_), offset(offset_), left(window_left), right(window_right), group(group_) {
    if (causal) right = 0;  // callers reject causal with right > 0; right = -1 with causal is right = 0
  }

  // First and last visible key of query u, clamped to the sequence (may give lo > hi: no key).
  int64_t lo(int64_t u) const { return left < 0 ? 0 : std::max<int64_t>(0, u / group + offset - left); }
  int64_t hi(int64_t u) const {
    return right < 0 ? seqlen_k - 1 : std::min<int64_t>(seqlen_k - 1, u / group + offset + right);
  }

  // Keys [*k_begin, *k_end) that queries [q_begin, q_end) touch; both bounds grow with i, so the first query
  // gives the start and the last one the end. Empty when k_begin >= k_end.
  void key_range(int64_t q_begin, int64_t q_end, int64_t* k_begin, int64_t* k_end) const {
    *k_begin = lo(q_begin);
    *k_end = std::max<int64_t>(*k_begin, hi(q_end - 1) + 1);
  }

  // True when every query in [q_begin, q_end) sees every key in [k_begin, k_end).
  bool block_fully_visible(int64_t q_begin, int64_t q_end, int64_t k_begin, int64_t k_end) const {
    return lo(q_end - 1) <= k_begin && hi(q_begin) >= k_end - 1;
  }

  // Queries that see key j (0 <= j < seqlen_k) form one interval [*q_first, *q_last] (possibly empty): the
  // inverse of lo/hi.
  void visible_queries(int64_t j, int64_t* q_first, int64_t* q_last) const {
    // j <= i + offset + right  <=>  i >= j - offset - right ;  j >= i + offset - left  <=>  i <= j - offset + left
    *q_first = right < 0 ? INT64_MIN / 4 : (j - offset - right) * group;
    *q_last = left < 0 ? INT64_MAX / 4 : (j - offset + left) * group + group - 1;
  }
};

// Dilation d splits the positions into d residue classes that never meet: query i (key position p = i + offset)
// sees only keys j with j ≡ p (mod d). Taken alone, class r is an undilated band over two strided sub-sequences,
// keys j = r + t·d and queries with p = r + s·d, and the bounds keep their values:
//     p - left·d <= j <= p + right·d   <=>   s - left <= t <= s + right.
// So a dilated window costs exactly its visible keys (as NATTEN does it), with the dense engine unchanged:
// view query u is query first_query + u·d, view key t is key r + t·d, and the band of the class is
// SlidingWindowPolicy(num_keys, first_key_pos, causal, left, right).
struct ResidueClass {
  int64_t first_query = 0;    // smallest i with (i + offset) ≡ r (mod d)
  int64_t num_queries = 0;    // queries of the class
  int64_t num_keys = 0;       // keys of the class
  int64_t first_key_pos = 0;  // s of the first query: view query u sits at view key position first_key_pos + u

  ResidueClass(int64_t seqlen_q, int64_t seqlen_k, int64_t dilation, int64_t residue) {
    const int64_t offset = seqlen_k - seqlen_q;
    first_query = ((residue - offset) % dilation + dilation) % dilation;
    num_queries = first_query < seqlen_q ? (seqlen_q - 1 - first_query) / dilation + 1 : 0;
    num_keys = residue < seqlen_k ? (seqlen_k - 1 - residue) / dilation + 1 : 0;
    first_key_pos = (first_query + offset - residue) / dilation;  // exact: the numerator is a multiple of d
  }
};

}  // namespace longattn
