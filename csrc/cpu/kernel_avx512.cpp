// The CPU engine compiled for avx512 (flags set per file in CMakeLists.txt).
#define LONGATTN_ISA_AVX512
#define LONGATTN_KERNEL_TABLE_FN avx512_kernels
#include "kernel_table.inc"
