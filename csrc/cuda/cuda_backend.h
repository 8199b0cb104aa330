// The CUDA backend's entry points, callable from plain C++ (api.cpp). The same source is compiled twice: by nvcc
// for GPUs (namespace cuda, when LONGATTN_WITH_CUDA) and by the host compiler for the CUDA emulator (namespace
// cuda_emulated, when LONGATTN_WITH_CUDA_EMULATOR).
#pragma once
#include "longattn/longattn.h"

namespace longattn {
namespace cuda {
// Runs a checked, non-empty forward call on the current CUDA device, on params.stream.
Status attention_forward(const AttentionParams& params);
// Device scratch bytes attention_forward needs in params.workspace (0 unless there are global tokens).
int64_t workspace_bytes(const AttentionParams& params);
// LSH attention (lsh.cu): a checked, non-empty call, on params.stream; and the device scratch it needs.
Status lsh_attention_forward(const LshAttentionParams& params);
int64_t lsh_workspace_bytes(const LshAttentionParams& params);
}  // namespace cuda
namespace cuda_emulated {
Status attention_forward(const AttentionParams& params);
int64_t workspace_bytes(const AttentionParams& params);
// attention_forward with the call's buffers registered for the emulator's memory checker (what api.cpp calls).
Status run_on_emulator(const AttentionParams& params);
Status lsh_attention_forward(const LshAttentionParams& params);
int64_t lsh_workspace_bytes(const LshAttentionParams& params);
Status run_lsh_on_emulator(const LshAttentionParams& params);
}  // namespace cuda_emulated
}  // namespace longattn
