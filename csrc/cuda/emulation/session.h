// Host side of one emulated backend call: it holds the emulator (calls are serialised, as on one device) and the
// list of buffers the call's kernels may touch; a kernel access outside them is reported by the memory checker.
#pragma once

#include <cstddef>
#include <cstdint>

namespace longattn::emulator {

class Session {
 public:
  Session();
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Registers [ptr, ptr + bytes) under `name` for the kernels of this session (read-only unless writable).
  void add(const char* name, const void* ptr, size_t bytes, bool writable);
  // A strided tensor: the span its elements cover, from its sizes and strides in elements.
  void add_strided(const char* name, const void* ptr, size_t element_bytes, const int64_t* sizes,
                   const int64_t* strides, int rank, bool writable);
};

}  // namespace longattn::emulator
