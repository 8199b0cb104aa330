#pragma once
#include "longattn/longattn.h"

namespace longattn::cpu {
// Runs a checked, non-empty forward call on the CPU.
Status attention_forward(const AttentionParams& params);
// Runs a checked, non-empty LSH attention call on the CPU.
Status lsh_attention_forward(const LshAttentionParams& params);
}  // namespace longattn::cpu
