// The CPU engine's AMX build (flags set per file in CMakeLists.txt): bfloat16 inputs on AMX-BF16 tiles (TDPBF16PS),
// float16 on AMX-FP16 tiles (TDPFP16PS) where the CPU has them; everything else runs the avx512_bf16 table.
#define LONGATTN_ISA_AVX512
#define LONGATTN_ISA_AVX512_BF16
#define LONGATTN_ISA_AMX
#define LONGATTN_KERNEL_TABLE_FN amx_kernels
#define LONGATTN_BASE_TABLE_FN avx512_bf16_kernels
#include "kernel_table.inc"
