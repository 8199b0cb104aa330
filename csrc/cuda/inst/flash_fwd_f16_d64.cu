// One instantiation of the tensor-core forward kernel: __half, head dim 64.
#include "../flash_fwd_launch.cuh"

namespace longattn::LONGATTN_CUDA_NS {
template cudaError_t launch_flash_fwd<__half, 64>(const FlashFwdParams&, dim3, void*);
}  // namespace longattn::LONGATTN_CUDA_NS
