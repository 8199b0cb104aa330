// The public entry points: check, skip empty work, dispatch by device.
#include "../cpu/cpu_backend.h"
#include "longattn/cuda_emulator.h"
#include "longattn/longattn.h"
#if defined(LONGATTN_WITH_CUDA) || defined(LONGATTN_WITH_CUDA_EMULATOR)
#include "../cuda/cuda_backend.h"
#endif
#ifndef LONGATTN_CUDA_ARCHS
#define LONGATTN_CUDA_ARCHS ""
#endif

#ifndef LONGATTN_VERSION
#define LONGATTN_VERSION "0.0.0"
#endif

namespace longattn {

const char* version() { return LONGATTN_VERSION; }

Status attention_forward(const AttentionParams& p) {
  Status st = check_params(p);
  if (!st.ok()) return st;
  const bool appends = p.cache_seqlens && p.k_new && p.seqlen_new > 0 && p.batch > 0;  // writes the cache anyway
  if ((p.batch == 0 || p.seqlen_q == 0 || p.heads_q == 0) && !appends) return Status::Ok();  // nothing to write
  switch (p.device) {
    case Device::kCpu: return cpu::attention_forward(p);
    case Device::kCuda:
#if defined(LONGATTN_WITH_CUDA)
      return cuda::attention_forward(p);
#else
      return Status::Unsupported("device: this longattn build has no CUDA kernels (built without nvcc); "
                                 "use CPU tensors or rebuild with the CUDA toolkit");
#endif
    case Device::kCudaEmulator:
#if defined(LONGATTN_WITH_CUDA_EMULATOR)
      return cuda_emulated::run_on_emulator(p);
#else
      return Status::Unsupported("device: this longattn build has no CUDA emulator (built with "
                                 "LONGATTN_CUDA_EMULATOR=OFF)");
#endif
  }
  return Status::Invalid("device: unknown");
}

int64_t attention_workspace_bytes(const AttentionParams& p) {
#if defined(LONGATTN_WITH_CUDA)
  if (p.device == Device::kCuda) return cuda::workspace_bytes(p);
#endif
#if defined(LONGATTN_WITH_CUDA_EMULATOR)
  if (p.device == Device::kCudaEmulator) return cuda_emulated::workspace_bytes(p);
#endif
  (void)p;
  return 0;
}

bool cuda_kernels_built() {
#if defined(LONGATTN_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

const char* cuda_architectures() { return LONGATTN_CUDA_ARCHS; }

Status lsh_attention_forward(const LshAttentionParams& p) {
  Status st = check_lsh_params(p);
  if (!st.ok()) return st;
  if (p.batch == 0 || p.seqlen == 0 || p.heads == 0) return Status::Ok();  // nothing to write
  switch (p.device) {
    case Device::kCpu: return cpu::lsh_attention_forward(p);
    case Device::kCuda:
#if defined(LONGATTN_WITH_CUDA)
      return cuda::lsh_attention_forward(p);
#else
      return Status::Unsupported("device: this longattn build has no CUDA kernels (built without nvcc); "
                                 "use CPU tensors or rebuild with the CUDA toolkit");
#endif
    case Device::kCudaEmulator:
#if defined(LONGATTN_WITH_CUDA_EMULATOR)
      return cuda_emulated::run_lsh_on_emulator(p);
#else
      return Status::Unsupported("device: this longattn build has no CUDA emulator (built with "
                                 "LONGATTN_CUDA_EMULATOR=OFF)");
#endif
  }
  return Status::Invalid("device: unknown");
}

int64_t lsh_attention_workspace_bytes(const LshAttentionParams& p) {
#if defined(LONGATTN_WITH_CUDA)
  if (p.device == Device::kCuda) return cuda::lsh_workspace_bytes(p);
#endif
#if defined(LONGATTN_WITH_CUDA_EMULATOR)
  if (p.device == Device::kCudaEmulator) return cuda_emulated::lsh_workspace_bytes(p);
#endif
  (void)p;
  return 0;
}

#if !defined(LONGATTN_WITH_CUDA_EMULATOR)
// Built without the emulator: it reports so and refuses to be configured.
namespace emulator {
bool built() { return false; }
bool plain_access_checks() { return false; }
Status configure(const Options&) {
  return Status::Unsupported("cuda emulator: this build has none (LONGATTN_CUDA_EMULATOR=OFF)");
}
Options options() { return {}; }
Stats stats() { return {}; }
void reset_stats() {}
std::vector<FragmentElement> fragment_layout(const std::string&) { return {}; }
}  // namespace emulator
#endif

}  // namespace longattn
