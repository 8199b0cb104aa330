// Merging partial attention results by their log-sum-exps — one routine for split-KV decoding, LSH rounds and
// context parallelism. A partial result over a subset of a row's keys is (o_s, lse_s): o_s the softmax-weighted
// average over that subset, lse_s the natural-log log-sum-exp of its scores (-inf: the subset had no visible key).
// Over all subsets, with M = max_s lse_s:
//     lse = M + log(Σ_s exp(lse_s - M)),    o = Σ_s exp(lse_s - lse) · o_s
// and an attention sink (one extra logit, no value) joins the sum of exponentials like another subset with o = 0.
// Every exponent is <= 0, so nothing overflows; a row with no visible key anywhere gets o = 0, lse = -inf (or the
// sink). Header-only, usable from host and device code.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(LONGATTN_CUDA_EMULATION)
#define LONGATTN_HD __host__ __device__
#else
#define LONGATTN_HD
#endif

namespace longattn {

// The weight exp(lse_s - lse) of each of n partials, and the merged lse. `lse_parts` may contain -inf.
// has_sink: include one more term, `sink` (a logit), in the denominator. Returns the merged lse.
template <typename Weights>
LONGATTN_HD inline float lse_merge_weights(const float* lse_parts, int n, bool has_sink, float sink, Weights weights) {
  float m = has_sink ? sink : -INFINITY;
  for (int s = 0; s < n; ++s) m = lse_parts[s] > m ? lse_parts[s] : m;
  if (m == -INFINITY) {  // nothing visible in any part, no sink
    for (int s = 0; s < n; ++s) weights(s, 0.0f);
    return -INFINITY;
  }
  float sum = has_sink ? expf(sink - m) : 0.0f;
  for (int s = 0; s < n; ++s) sum += expf(lse_parts[s] - m);  // exp(-inf) = 0
  const float lse = m + logf(sum);
  for (int s = 0; s < n; ++s) weights(s, lse_parts[s] == -INFINITY ? 0.0f : expf(lse_parts[s] - lse));
  return lse;
}

}  // namespace longattn
