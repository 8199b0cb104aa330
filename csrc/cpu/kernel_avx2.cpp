// The CPU engine compiled for avx2 (flags set per file in CMakeLists.txt).
#define LONGATTN_ISA_AVX2
#define LONGATTN_KERNEL_TABLE_FN avx2_kernels
#include "kernel_table.inc"
