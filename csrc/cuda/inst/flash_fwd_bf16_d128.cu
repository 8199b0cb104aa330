// One instantiation of the tensor-core forward kernel: __nv_bfloat16, head dim 128.
#include "../flash_fwd_launch.cuh"

namespace longattn::LONGATTN_CUDA_NS {
template cudaError_t launch_flash_fwd<__nv_bfloat16, 128>(const FlashFwdParams&, dim3, void*);
}  // namespace longattn::LONGATTN_CUDA_NS
