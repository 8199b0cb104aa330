// One instantiation of the tensor-core LSH chunk kernel: __nv_bfloat16, head dim 96.
#include "../lsh_fwd.cuh"

namespace longattn::LONGATTN_CUDA_NS {
template cudaError_t launch_lsh_chunk_fwd<__nv_bfloat16, 96>(const LshFwdParams&, dim3, void*);
}  // namespace longattn::LONGATTN_CUDA_NS
