// The CUDA backend's entry points, callable from plain C++ (api.cpp). Present only when LONGATTN_WITH_CUDA.
#pragma once
#include "longattn/longattn.h"

namespace longattn::cuda {
// Runs a checked, non-empty forward call on the current CUDA device, on params.stream.
Status attention_forward(const AttentionParams& params);
// Device scratch bytes attention_forward needs in params.workspace (0 unless there are global tokens).
int64_t workspace_bytes(const AttentionParams& params);
}  // namespace longattn::cuda
