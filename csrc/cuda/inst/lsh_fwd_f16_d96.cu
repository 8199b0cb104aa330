// One instantiation of the tensor-core LSH chunk kernel: __half, head dim 96.
#include "../lsh_fwd.cuh"

namespace longattn::LONGATTN_CUDA_NS {
template cudaError_t launch_lsh_chunk_fwd<__half, 96>(const LshFwdParams&, dim3, void*);
}  // namespace longattn::LONGATTN_CUDA_NS
