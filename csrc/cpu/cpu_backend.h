#pragma once
#include "longattn/longattn.h"

namespace longattn::cpu {
// Runs a checked, non-empty forward call on the CPU.
Status attention_forward(const AttentionParams& params);
}  // namespace longattn::cpu
