// The AMX tile operations the engine's AMX path (engine.h, kAmxTiles) is written against, in two implementations
// of one interface:
//   LONGATTN_AMX_HARDWARE  the instructions (LDTILECFG, TILELOADD, TILESTORED, TILEZERO, TDPBF16PS, TDPFP16PS,
//                          TILERELEASE) as inline assembly, the tile numbers encoded as immediates;
//   LONGATTN_AMX_MODEL     a model that performs each instruction's operation as the Intel SDM's pseudo-code states it
//                          (row by row, the pair products accumulated with one rounding each, BF16 input denormals
//                          read as zero, FP32 output denormals flushed) on a per-thread tile file in memory, and stops
//                          the process where the hardware would fault (#UD): a tile used before LDTILECFG, operand
//                          shapes that do not chain, a tile used twice in one product.
// The model exists so that the AMX path's packing, tile shapes and strides are tested on every host, AMX or not (the
// same idea as the CUDA emulator); the instructions themselves run only where the CPU has them.
//
// Every tile of the engine is configured as 16 rows x 64 bytes: a C tile is 16 x 16 float32, an A tile 16 rows x 16
// pairs, a B tile 16 pair-rows x 16 columns of pairs.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if !defined(LONGATTN_AMX_HARDWARE) && !defined(LONGATTN_AMX_MODEL)
#error "amx.h: define LONGATTN_AMX_HARDWARE or LONGATTN_AMX_MODEL"
#endif

namespace longattn::cpu::LONGATTN_ISA_NAME::amx {

constexpr int kTileRows = 16, kTileBytes = 64, kPairs = kTileBytes / 4;  // 16 pairs (32 values) per tile row
// The tiles of the engine's 2 x 2 block product: C(a, b) = tile 2a + b, A(a) = tile 4 + a, B(b) = tile 6 + b.
constexpr int kC00 = 0, kC01 = 1, kC10 = 2, kC11 = 3, kA0 = 4, kA1 = 5, kB0 = 6, kB1 = 7;

// The 64-byte LDTILECFG operand (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette_id = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row of each tile
  uint8_t rows[16] = {};
};

inline TileConfig engine_tile_config() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = kTileBytes;
    c.rows[t] = kTileRows;
  }
  return c;
}

#if defined(LONGATTN_AMX_HARDWARE)

inline void configure(const TileConfig& c) { __asm__ volatile("ldtilecfg %0" ::"m"(c)); }
inline void release() { __asm__ volatile("tilerelease" ::); }
template <int T> inline void zero() { __asm__ volatile("tilezero %%tmm%c0" ::"i"(T)); }
template <int T> inline void load(const void* base, int64_t stride_bytes) {
  __asm__ volatile("tileloadd (%0,%1,1), %%tmm%c2" ::"r"(base), "r"(stride_bytes), "i"(T) : "memory");
}
template <int T> inline void store(void* base, int64_t stride_bytes) {
  __asm__ volatile("tilestored %%tmm%c2, (%0,%1,1)" ::"r"(base), "r"(stride_bytes), "i"(T) : "memory");
}
// C += A · B over pairs: TDPBF16PS / TDPFP16PS (AT&T operand order: B, A, C)
template <int C, int A, int B> inline void dot_bf16() {
  __asm__ volatile("tdpbf16ps %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(C), "i"(A), "i"(B));
}
template <int C, int A, int B> inline void dot_fp16() {
  __asm__ volatile("tdpfp16ps %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(C), "i"(A), "i"(B));
}

#else  // LONGATTN_AMX_MODEL

struct TileFile {
  alignas(64) uint8_t data[8][kTileRows][kTileBytes];
  TileConfig config;
  bool configured = false;
};
inline TileFile& tile_file() {
  static thread_local TileFile file;
  return file;
}

[[noreturn]] inline void fault(const char* what, int tile) {
  std::fprintf(stderr, "longattn AMX model: %s (tile %d): the hardware raises #UD here\n", what, tile);
  std::abort();
}
inline void check_tile(int t) {
  const TileFile& f = tile_file();
  if (!f.configured) fault("tile instruction before LDTILECFG", t);
  if (f.config.rows[t] == 0 || f.config.rows[t] > kTileRows || f.config.colsb[t] == 0 ||
      f.config.colsb[t] > kTileBytes)
    fault("tile not configured", t);
}

// LDTILECFG: the shapes are taken and every tile is zeroed.
inline void configure(const TileConfig& c) {
  TileFile& f = tile_file();
  if (c.palette_id != 1) fault("palette other than 1", -1);
  f.config = c;
  std::memset(f.data, 0, sizeof f.data);
  f.configured = true;
}
inline void release() {
  TileFile& f = tile_file();
  std::memset(f.data, 0, sizeof f.data);
  f.configured = false;
}
template <int T> inline void zero() {
  check_tile(T);
  std::memset(tile_file().data[T], 0, sizeof tile_file().data[T]);
}
// TILELOADD: rows x colsb bytes from base + r · stride; the rest of the tile becomes zero.
template <int T> inline void load(const void* base, int64_t stride_bytes) {
  check_tile(T);
  TileFile& f = tile_file();
  std::memset(f.data[T], 0, sizeof f.data[T]);
  for (int r = 0; r < f.config.rows[T]; ++r)
    std::memcpy(f.data[T][r], static_cast<const uint8_t*>(base) + r * stride_bytes, f.config.colsb[T]);
}
template <int T> inline void store(void* base, int64_t stride_bytes) {
  check_tile(T);
  const TileFile& f = tile_file();
  for (int r = 0; r < f.config.rows[T]; ++r)
    std::memcpy(static_cast<uint8_t*>(base) + r * stride_bytes, f.data[T][r], f.config.colsb[T]);
}

inline float model_bits_f32(uint32_t b) { float x; std::memcpy(&x, &b, 4); return x; }
inline float model_bf16(uint16_t h) {  // make_fp32 with input denormals read as zero
  return (h & 0x7f80u) == 0 ? model_bits_f32(uint32_t(h & 0x8000u) << 16) : model_bits_f32(uint32_t(h) << 16);
}
inline float model_fp16(uint16_t h) {  // input denormals are honoured
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return model_bits_f32(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    const float x = float(man) * (1.0f / 16777216.0f);  // man · 2^-24, exact
    return sign ? -x : x;
  }
  return model_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}
inline float flush_denormal(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return (b & 0x7f800000u) == 0 ? model_bits_f32(b & 0x80000000u) : x;
}

// TDPBF16PS / TDPFP16PS: for each row m of C and column n, over the pairs k of A's row m and B's row k:
// c += a.lo · b.lo, then c += a.hi · b.hi, each a fused multiply-add rounded to nearest even.
template <int C, int A, int B, bool kFp16> inline void dot() {
  static_assert(C != A && C != B && A != B, "one tile used twice in a product");
  check_tile(C);
  check_tile(A);
  check_tile(B);
  TileFile& f = tile_file();
  const int M = f.config.rows[C], K = f.config.colsb[A] / 4, N = f.config.colsb[C] / 4;
  if (f.config.rows[A] != M || f.config.rows[B] != K || f.config.colsb[B] != f.config.colsb[C])
    fault("operand shapes do not chain (A rows = C rows, A pairs = B rows, B bytes = C bytes)", C);
  const auto value = [](const uint8_t* row, int i) {
    uint16_t h;
    std::memcpy(&h, row + 2 * i, 2);
    return kFp16 ? model_fp16(h) : model_bf16(h);
  };
  for (int m = 0; m < M; ++m) {
    float acc[kPairs];
    std::memcpy(acc, f.data[C][m], sizeof acc);
    for (int k = 0; k < K; ++k) {
      const float a0 = value(f.data[A][m], 2 * k), a1 = value(f.data[A][m], 2 * k + 1);
      for (int n = 0; n < N; ++n) {
        acc[n] = flush_denormal(__builtin_fmaf(a0, value(f.data[B][k], 2 * n), acc[n]));
        acc[n] = flush_denormal(__builtin_fmaf(a1, value(f.data[B][k], 2 * n + 1), acc[n]));
      }
    }
    std::memcpy(f.data[C][m], acc, sizeof acc);
  }
}
template <int C, int A, int B> inline void dot_bf16() { dot<C, A, B, false>(); }
template <int C, int A, int B> inline void dot_fp16() { dot<C, A, B, true>(); }

#endif

// The engine's tiles configured for the lifetime of one work item, released after it (the thread's tile state
// is then no longer saved on context switches).
struct TileScope {
  TileScope() {
    static const TileConfig config = engine_tile_config();
    configure(config);
  }
  ~TileScope() { release(); }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

}  // namespace longattn::cpu::LONGATTN_ISA_NAME::amx
