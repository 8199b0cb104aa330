// A test build of the engine's AMX path: the AVX2 engine with the AMX tile instructions replaced by the model of
// amx.h, so the AMX packing, tile shapes and strides run on any AVX2 host. Chosen only when asked for
// (LONGATTN_CPU_ISA=amx_model, set_cpu_isa); bfloat16 and float16 use the tiles, the rest runs the avx2 table.
#define LONGATTN_ISA_AVX2
#define LONGATTN_ISA_AMX_MODEL
#define LONGATTN_KERNEL_TABLE_FN amx_model_kernels
#define LONGATTN_BASE_TABLE_FN avx2_kernels
#include "kernel_table.inc"
