// The CPU engine compiled for AVX-512 with AVX512-BF16 (flags set per file in CMakeLists.txt): bfloat16 inputs run
// the VDPBF16PS tiles of engine.h; float32 and float16 run the same float32 engine as the avx512 variant.
#define LONGATTN_ISA_AVX512
#define LONGATTN_ISA_AVX512_BF16
#define LONGATTN_KERNEL_TABLE_FN avx512_bf16_kernels
#include "kernel_table.inc"
