// How one CPU call is cut into independent work items, and what they share.
//
// A work item is a run of consecutive queries of one *view* of a (batch, query head):
//   - a residue class of the head's dilation (ResidueClass in band_policy.h; the whole head when dilation is 1):
//     an undilated band problem over strided rows, plus the global keys when there are global tokens;
//   - or the head's global query rows (kGlobalRows), gathered by position, each attending every key.
// The dispatcher builds the plan once per call (ISA-independent); the ISA's engine runs the items.
#pragma once

#include <cstdint>
#include <vector>

#include "longattn/longattn.h"

namespace longattn::cpu {

constexpr int64_t kGlobalRows = -1;

struct WorkItem {
  int32_t batch = 0;
  int32_t head = 0;
  int64_t residue = 0;  // residue class of the head's dilation, or kGlobalRows
  int64_t first = 0;    // view queries [first, end) (kGlobalRows: indices into the batch's global list)
  int64_t end = 0;
};

struct CallPlan {
  const AttentionParams& p;
  std::vector<WorkItem> items;
  std::vector<int64_t> global_index;  // positions of the global tokens, batch after batch, ascending
  std::vector<int64_t> global_begin;  // batch b owns global_index[global_begin[b] .. global_begin[b + 1])

  // queries_per_group: the engine's unit of query work. With a band bounded on both sides, an item chains several
  // groups (the engine reuses packed key tiles between them), as long as every thread still gets several items.
  CallPlan(const AttentionParams& params, int64_t queries_per_group, int num_threads);

  int64_t dilation(int64_t head) const { return p.dilation ? p.dilation[head] : 1; }
  bool has_global() const { return p.global_tokens != nullptr; }
  bool is_global(int64_t b, int64_t i) const {
    return p.global_tokens[b * p.global_batch_stride + i * p.global_seq_stride] != 0;
  }
  const int64_t* globals_of(int64_t b, int64_t* count) const {
    *count = global_begin[b + 1] - global_begin[b];
    return global_index.data() + global_begin[b];
  }
};

}  // namespace longattn::cpu
