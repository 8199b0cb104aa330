// The instructions the kernels use, as the PTX ISA defines them: warp shuffles and votes, __syncwarp,
// ldmatrix (x1/x2/x4, .trans), mma.sync m16n8k16 (f16/bf16 in, f32 accumulate), cp.async with zero-fill and
// commit/wait groups. Fragment layouts come from the ISA's tables ("Matrix fragments for mma.m16n8k16",
// "ldmatrix"); tests cross-check them against CuTe's MMA_Traits / Copy_Traits and against a plain matmul.
#include <sstream>

#include "runtime.h"

namespace longattn::emulator {
namespace detail {
namespace {

// ---- fragment layouts (g = lane / 4, t = lane % 4) ------------------------------------------------------------------
// mma.m16n8k16 A (16x16, row-major): value v = 2 * register + half; registers 0..3 hold rows g, g+8, g, g+8 and
// columns 2t, 2t, 2t+8, 2t+8 (+ half).
inline void mma_a_coord(int lane, int v, int& row, int& col) {
  const int reg = v >> 1, half = v & 1;
  row = (lane >> 2) + 8 * (reg & 1);
  col = 2 * (lane & 3) + half + 8 * (reg >> 1);
}
// B (16x8, "col": k-major per column): registers 0..1 hold k = 2t (+8) + half, column n = g.
inline void mma_b_coord(int lane, int v, int& k, int& n) {
  const int reg = v >> 1, half = v & 1;
  k = 2 * (lane & 3) + half + 8 * reg;
  n = lane >> 2;
}
// C/D (16x8 f32): values 0..3 hold row g (values 0, 1) or g + 8 (2, 3), column 2t + (v % 2).
inline void mma_c_coord(int lane, int v, int& row, int& col) {
  row = (lane >> 2) + 8 * (v >> 1);
  col = 2 * (lane & 3) + (v & 1);
}
// ldmatrix: register j of every lane comes from matrix j. Without .trans, lane l gets row l / 4, columns
// 2 (l % 4) + half; with .trans, rows 2 (l % 4) + half of column l / 4.
inline void ldmatrix_coord(int lane, int half, bool trans, int& row, int& col) {
  if (!trans) {
    row = lane >> 2;
    col = 2 * (lane & 3) + half;
  } else {
    row = 2 * (lane & 3) + half;
    col = lane >> 2;
  }
}

inline float to_float(MmaType type, uint16_t bits) {
  return type == MmaType::kF16 ? half_bits_to_float(bits) : bf16_bits_to_float(bits);
}
inline uint16_t half_of(uint32_t reg, int half) { return uint16_t(half ? reg >> 16 : reg & 0xffffu); }

void complete_mma(MmaType type, Warp& w) {
  float a[16][16], b[16][8], c[16][8];  // A (m, k), B (k, n), C (m, n)
  for (int lane = 0; lane < 32; ++lane) {
    const Operand& op = w.op[lane];
    for (int v = 0; v < 8; ++v) {
      int r, k;
      mma_a_coord(lane, v, r, k);
      a[r][k] = to_float(type, half_of(op.a[v >> 1], v & 1));
    }
    for (int v = 0; v < 4; ++v) {
      int k, n;
      mma_b_coord(lane, v, k, n);
      b[k][n] = to_float(type, half_of(op.b[v >> 1], v & 1));
    }
    for (int v = 0; v < 4; ++v) {
      int r, n;
      mma_c_coord(lane, v, r, n);
      c[r][n] = op.c[v];
    }
  }
  // D = C + A B in float32, summed in k order (products of 16-bit floats are exact in float32; the tensor core's own
  // summation order and rounding of partial sums are not modelled).
  for (int r = 0; r < 16; ++r)
    for (int k = 0; k < 16; ++k)
      for (int n = 0; n < 8; ++n) c[r][n] += a[r][k] * b[k][n];
  for (int lane = 0; lane < 32; ++lane)
    for (int v = 0; v < 4; ++v) {
      int r, n;
      mma_c_coord(lane, v, r, n);
      w.res[lane].d[v] = c[r][n];
    }
}

void complete_ldmatrix(int subkind, Warp& w, Fiber& last) {
  const int matrices = subkind & 7;
  const bool trans = subkind & 8;
  uint16_t m[4][8][8];  // matrix, row, column
  Fiber* lanes = last.worker->fibers.data() + last.warp * 32;
  const char* what = trans ? "ldmatrix .trans" : "ldmatrix";
  for (int j = 0; j < matrices; ++j)
    for (int r = 0; r < 8; ++r) {
      // row r of matrix j comes from the address lane 8 j + r gives; the read is that lane's
      Fiber& src = lanes[8 * j + r];
      const auto address = reinterpret_cast<uintptr_t>(w.op[8 * j + r].address);
      if (!is_shared(src, address)) {
        std::ostringstream os;
        os << what << ": lane " << 8 * j + r << " gives the row address 0x" << std::hex << address
           << ", which is not in shared memory";
        report(src, cudaErrorIllegalAddress, os.str());
        return;
      }
      if (address % 16) {
        report(src, cudaErrorMisalignedAddress,
               std::string(what) + ": lane " + std::to_string(8 * j + r) + " gives a row address that is not "
               "16-byte aligned (shared offset " + std::to_string(address - uintptr_t(src.block->smem)) + ")");
        return;
      }
      const uintptr_t base = reinterpret_cast<uintptr_t>(src.block->smem);
      if (address < base || address + 16 > base + src.block->used_bytes) {
        report(src, cudaErrorIllegalAddress,
               std::string(what) + ": lane " + std::to_string(8 * j + r) + " reads 16 bytes at shared offset " +
                   std::to_string(int64_t(address - base)) + ", outside the block's " +
                   std::to_string(src.block->used_bytes) + " bytes");
        return;
      }
      check_shared(src, address - base, 16, Access::kRead, what);
      std::memcpy(m[j][r], reinterpret_cast<const void*>(address), 16);
    }
  for (int lane = 0; lane < 32; ++lane)
    for (int j = 0; j < matrices; ++j) {
      uint32_t reg = 0;
      for (int half = 0; half < 2; ++half) {
        int r, c;
        ldmatrix_coord(lane, half, trans, r, c);
        reg |= uint32_t(m[j][r][c]) << (16 * half);
      }
      w.res[lane].r[j] = reg;
    }
}

void complete_shuffle(ShuffleKind kind, unsigned mask, Warp& w, Fiber& last) {
  for (unsigned bits = mask; bits; bits &= bits - 1) {
    const int lane = __builtin_ctz(bits);
    const Operand& op = w.op[lane];
    const int width = op.width;
    if (width < 1 || width > 32 || (width & (width - 1))) {
      report(last.worker->fibers[last.warp * 32 + lane], cudaErrorLaunchFailure,
             "shuffle: width " + std::to_string(width) + " is not a power of two from 1 to 32");
      return;
    }
    const int segment = lane & ~(width - 1), in_seg = lane & (width - 1);
    int src = lane;
    switch (kind) {
      case ShuffleKind::kIdx: src = segment + (op.arg & (width - 1)); break;
      case ShuffleKind::kUp: src = in_seg >= op.arg ? lane - op.arg : lane; break;
      case ShuffleKind::kDown: src = in_seg + op.arg < width ? lane + op.arg : lane; break;
      case ShuffleKind::kXor: {
        const int x = lane ^ op.arg;
        src = (x >= 0 && x < 32 && (x & ~(width - 1)) == segment) ? x : lane;
        break;
      }
    }
    if (!(mask & (1u << src))) {
      std::ostringstream os;
      os << "shuffle: lane " << lane << " reads lane " << src << ", which is not in the mask 0x" << std::hex << mask;
      report(last.worker->fibers[last.warp * 32 + lane], cudaErrorLaunchFailure, os.str());
      return;
    }
    w.res[lane].bits = w.op[src].bits;
  }
}

void complete_vote(VoteKind kind, unsigned mask, Warp& w) {
  unsigned ballot = 0;
  for (unsigned bits = mask; bits; bits &= bits - 1) {
    const int lane = __builtin_ctz(bits);
    if (w.op[lane].predicate) ballot |= 1u << lane;
  }
  const uint64_t result = kind == VoteKind::kBallot ? ballot
                          : kind == VoteKind::kAny  ? uint64_t(ballot != 0)
                                                    : uint64_t(ballot == mask);
  for (unsigned bits = mask; bits; bits &= bits - 1) w.res[__builtin_ctz(bits)].bits = result;
}

Fiber& fiber_for(const char* what, const char* file, int line) {
  (void)file;
  (void)line;
  return running_fiber(what);
}

}  // namespace

const char* collective_name(Collective kind, int subkind) {
  switch (kind) {
    case Collective::kShuffle: {
      static const char* names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"};
      return names[subkind & 3];
    }
    case Collective::kVote: {
      static const char* names[] = {"__ballot_sync", "__any_sync", "__all_sync"};
      return names[subkind % 3];
    }
    case Collective::kSync: return "__syncwarp";
    case Collective::kLdmatrix: {
      static const char* names[] = {"?", "ldmatrix.x1", "ldmatrix.x2", "?", "ldmatrix.x4", "?", "?", "?",
                                    "?", "ldmatrix.x1.trans", "ldmatrix.x2.trans", "?", "ldmatrix.x4.trans"};
      return names[subkind & 15];
    }
    case Collective::kMma: return subkind == int(MmaType::kF16) ? "mma.m16n8k16.f32.f16" : "mma.m16n8k16.f32.bf16";
  }
  return "warp collective";
}

void complete_collective(Collective kind, int subkind, unsigned mask, Warp& w, Fiber& last) {
  switch (kind) {
    case Collective::kShuffle: complete_shuffle(ShuffleKind(subkind), mask, w, last); break;
    case Collective::kVote: complete_vote(VoteKind(subkind), mask, w); break;
    case Collective::kSync: ++w.sync_epoch; break;
    case Collective::kLdmatrix:
      last.worker->counters.ldmatrix += 1;
      complete_ldmatrix(subkind, w, last);
      break;
    case Collective::kMma:
      last.worker->counters.mma += 1;
      complete_mma(MmaType(subkind), w);
      break;
  }
}

void complete_async_group(Fiber& f, std::vector<AsyncCopy>& group) {
  for (const AsyncCopy& c : group) {
    check_shared(f, c.offset, c.bytes, Access::kAsyncComplete, "cp.async.wait_group");
    std::memcpy(f.block->smem + c.offset, c.data, c.bytes);
  }
}

}  // namespace detail

using namespace detail;

// ---- the entry points the PTX wrappers call -------------------------------------------------------------------------
uint64_t warp_shuffle(ShuffleKind kind, unsigned mask, uint64_t bits, int lane_arg, int width, const char* file,
                      int line) {
  Operand op{};
  op.bits = bits;
  op.arg = lane_arg;
  op.width = width;
  return warp_collective(Collective::kShuffle, int(kind), mask, op, file, line).bits;
}

unsigned warp_vote(VoteKind kind, unsigned mask, int predicate, const char* file, int line) {
  Operand op{};
  op.predicate = predicate;
  return unsigned(warp_collective(Collective::kVote, int(kind), mask, op, file, line).bits);
}

void warp_sync(unsigned mask, const char* file, int line) {
  warp_collective(Collective::kSync, 0, mask, Operand{}, file, line);
}

void mma_m16n8k16(MmaType type, float c[4], const uint32_t a[4], const uint32_t b[2], const char* file, int line) {
  Operand op{};
  std::memcpy(op.a, a, sizeof(op.a));
  std::memcpy(op.b, b, sizeof(op.b));
  std::memcpy(op.c, c, sizeof(op.c));
  const Result& r = warp_collective(Collective::kMma, int(type), 0xffffffffu, op, file, line);
  std::memcpy(c, r.d, sizeof(r.d));
}

void ldmatrix(int matrices, bool trans, uint32_t* r, const void* row, const char* file, int line) {
  Operand op{};
  op.address = row;
  const Result& res =
      warp_collective(Collective::kLdmatrix, matrices | (trans ? 8 : 0), 0xffffffffu, op, file, line);
  std::memcpy(r, res.r, sizeof(uint32_t) * size_t(matrices));
}

void cp_async(void* dst, const void* src, int cp_bytes, int src_bytes, const char* file, int line) {
  Fiber& f = fiber_for("cp.async", file, line);
  const std::string what = "cp.async (" + source(file, line) + ")";
  if (cp_bytes != 4 && cp_bytes != 8 && cp_bytes != 16) {
    report(f, cudaErrorIllegalInstruction, what + ": cp-size " + std::to_string(cp_bytes) + " (PTX allows 4, 8, 16)");
    abandon(f);
  }
  if (src_bytes < 0 || src_bytes > cp_bytes) {
    report(f, cudaErrorIllegalInstruction,
           what + ": src-size " + std::to_string(src_bytes) + " outside 0.." + std::to_string(cp_bytes));
    abandon(f);
  }
  f.worker->counters.cp_async += 1;
  const auto d = reinterpret_cast<uintptr_t>(dst);
  check_access(f, d, size_t(cp_bytes), Access::kAsyncIssue, what.c_str());
  AsyncCopy c{};
  c.offset = uint32_t(d - reinterpret_cast<uintptr_t>(f.block->smem));
  c.bytes = uint8_t(cp_bytes);
  c.file = file;
  c.line = line;
  if (src_bytes > 0) {  // with src-size 0 nothing is read (the zero-fill of rows outside a tensor relies on it)
    const auto s = reinterpret_cast<uintptr_t>(src);
    if (s % size_t(cp_bytes)) {
      report(f, cudaErrorMisalignedAddress,
             what + ": the global source is not " + std::to_string(cp_bytes) + "-byte aligned");
      abandon(f);
    }
    check_access(f, s, size_t(src_bytes), Access::kRead, what.c_str());
    std::memcpy(c.data, src, size_t(src_bytes));
  }
  f.open_group.push_back(c);
}

void cp_async_commit(const char* file, int line) {
  Fiber& f = fiber_for("cp.async.commit_group", file, line);
  f.groups.push_back(std::move(f.open_group));
  f.open_group.clear();
}

void cp_async_wait_group(int pending, const char* file, int line) {
  Fiber& f = fiber_for("cp.async.wait_group", file, line);
  while (f.groups.size() > size_t(std::max(pending, 0))) {
    complete_async_group(f, f.groups.front());
    f.groups.pop_front();
  }
}

void cp_async_wait_all(const char* file, int line) {
  cp_async_commit(file, line);
  cp_async_wait_group(0, file, line);
}

// ---- the layouts, for tests -----------------------------------------------------------------------------------------
std::vector<FragmentElement> fragment_layout(const std::string& name) {
  std::vector<FragmentElement> out;
  for (int lane = 0; lane < 32; ++lane) {
    if (name == "mma.m16n8k16.a") {
      for (int v = 0; v < 8; ++v) {
        int r, c;
        mma_a_coord(lane, v, r, c);
        out.push_back({lane, v, r, c, 0});
      }
    } else if (name == "mma.m16n8k16.b") {
      for (int v = 0; v < 4; ++v) {
        int r, c;
        mma_b_coord(lane, v, r, c);
        out.push_back({lane, v, r, c, 0});
      }
    } else if (name == "mma.m16n8k16.c") {
      for (int v = 0; v < 4; ++v) {
        int r, c;
        mma_c_coord(lane, v, r, c);
        out.push_back({lane, v, r, c, 0});
      }
    } else if (name == "ldmatrix.x4" || name == "ldmatrix.x4.trans") {
      for (int v = 0; v < 8; ++v) {  // v = 2 * register + half
        int r, c;
        ldmatrix_coord(lane, v & 1, name.size() > 11, r, c);
        out.push_back({lane, v, r, c, v >> 1});
      }
    }
  }
  return out;
}

}  // namespace longattn::emulator
