// The CPU engine compiled for scalar (flags set per file in CMakeLists.txt).
#define LONGATTN_ISA_SCALAR
#define LONGATTN_KERNEL_TABLE_FN scalar_kernels
#include "kernel_table.inc"
