// One instantiation of the tensor-core forward kernel: __half, head dim 256.
#include "../flash_fwd_launch.cuh"

namespace longattn::LONGATTN_CUDA_NS {
template cudaError_t launch_flash_fwd<__half, 256>(const FlashFwdParams&, dim3, void*);
}  // namespace longattn::LONGATTN_CUDA_NS
