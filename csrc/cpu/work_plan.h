// How one CPU call is cut into independent work items, and what they share.
//
// A work item is a run of consecutive queries of one *view* of a (sequence, head):
//   - a residue class of the head's dilation (ResidueClass in band_policy.h; the whole head when dilation is 1):
//     an undilated band problem over strided rows, plus the global keys when there are global tokens;
//   - or the head's global query rows (kGlobalRows), gathered by position, each attending every key.
// With grouped-query attention (and no dilation or global tokens) the view packs the G query heads of one key/value
// head: view query u is query u / G of head hk·G + u % G, so each key tile is read once for the G heads.
// A decode call against a KV cache may also split each sequence's keys into pieces (flash-decoding): items then
// write partial results, merged by their log-sum-exps after all items ran.
// The dispatcher builds the plan once per call (ISA-independent); the ISA's engine runs the items.
#pragma once

#include <cstdint>
#include <vector>

#include "longattn/longattn.h"

namespace longattn::cpu {

constexpr int64_t kGlobalRows = -1;

struct WorkItem {
  int32_t batch = 0;
  int32_t head = 0;     // the query head, or with packing (CallPlan::group > 1) the key/value head
  int64_t residue = 0;  // residue class of the head's dilation, or kGlobalRows
  int64_t first = 0;    // view queries [first, end) (kGlobalRows: indices into the batch's global list)
  int64_t end = 0;
  int32_t split = 0;    // key split (CallPlan::splits > 1): keys [key_lo, key_hi) of the view
  int64_t key_lo = 0, key_hi = INT64_MAX;
  int32_t head_end = 0;  // decode items: key/value heads [head, head_end)
};

// Where sequence b's rows are and how long it is: the dense BSHD layout, the packed layout of a variable-length
// batch (docs/semantics.md) or a KV cache (docs/semantics.md).
struct SequenceRows {
  int64_t n_q = 0, n_k = 0;          // its query and key counts
  int64_t q_first = 0, k_first = 0;  // packed layouts: its first row in q / out and in k / v
};

struct CallPlan {
  const AttentionParams& p;
  std::vector<WorkItem> items;
  std::vector<int64_t> global_index;  // positions of the global tokens, batch after batch, ascending
  std::vector<int64_t> global_begin;  // batch b owns global_index[global_begin[b] .. global_begin[b + 1])
  int64_t group = 1;                  // query heads packed per view (grouped-query packing), 1 = none
  int splits = 1;                     // key splits per sequence
  // The decode path (decode_engine.h): few query columns per key/value head, items over a range of kv heads.
  bool decode = false;
  // With splits > 1: each item's normalised partial output and lse, [split][batch][head_q][query] (Dv floats / 1)
  float* partial_o = nullptr;
  float* partial_lse = nullptr;

  // queries_per_group: the engine's unit of query work. With a band bounded on both sides, an item chains several
  // groups (the engine reuses packed key tiles between them), as long as every thread still gets several items.
  // decode_columns: the most (query, head) columns per key/value head the ISA's decode path takes (0: none).
  CallPlan(const AttentionParams& params, int64_t queries_per_group, int num_threads, int decode_columns = 0);

  int64_t dilation(int64_t head) const { return p.dilation ? p.dilation[head] : 1; }
  bool has_global() const { return p.global_tokens != nullptr; }
  bool is_global(int64_t b, int64_t i) const {
    return p.global_tokens[b * p.global_batch_stride + i * p.global_seq_stride] != 0;
  }
  bool key_is_real(int64_t b, int64_t j) const {
    return !p.key_padding_mask || p.key_padding_mask[b * p.mask_batch_stride + j * p.mask_seq_stride] != 0;
  }
  const int64_t* globals_of(int64_t b, int64_t* count) const {
    *count = global_begin[b + 1] - global_begin[b];
    return global_index.data() + global_begin[b];
  }
  SequenceRows sequence(int64_t b) const;
  void plan_decode(int num_threads);
  int64_t partial_row(int64_t split, int64_t b, int64_t h, int64_t i) const {
    return ((split * p.batch + b) * p.heads_q + h) * p.seqlen_q + i;
  }
};

// The number of key splits a KV-cache call uses (AttentionParams::num_splits, or the library's choice for 0).
int choose_splits(const AttentionParams& p, int64_t group, int64_t queries_per_group, int num_threads);

}  // namespace longattn::cpu
