// Calls the installed library: causal attention on the CPU, checked against a direct computation. With
// LONGATTN_CONSUMER_NO_GPU=1 (a machine without a GPU), also a CUDA request, which must be refused as unsupported
// with its reason (no device or driver, or a CPU-only build), never reported as an internal error.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "longattn/longattn.h"

int main() {
  const int64_t B = 1, S = 5, H = 2, D = 4;
  std::vector<float> q(B * S * H * D), k(q.size()), v(q.size()), out(q.size());
  for (size_t i = 0; i < q.size(); ++i) {
    q[i] = std::sin(0.3f * float(i));
    k[i] = std::cos(0.2f * float(i));
    v[i] = 0.01f * float(i);
  }
  longattn::AttentionParams p;
  p.q = q.data(); p.k = k.data(); p.v = v.data(); p.out = out.data();
  p.batch = B; p.seqlen_q = S; p.seqlen_k = S; p.heads_q = H; p.heads_k = H; p.head_dim = D; p.head_dim_v = D;
  p.q_stride = p.k_stride = p.v_stride = p.out_stride = {S * H * D, H * D, D};
  p.scale = 1.0f / std::sqrt(float(D));
  p.causal = true;
  const longattn::Status st = longattn::attention_forward(p);
  if (!st.ok()) {
    std::printf("CPU attention failed: %s\n", st.message.c_str());
    return 1;
  }
  double worst = 0;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < S; ++i) {  // row i sees keys 0..i
      std::vector<double> w(i + 1);
      double m = -1e300, sum = 0;
      for (int64_t j = 0; j <= i; ++j) {
        double s = 0;
        for (int64_t d = 0; d < D; ++d) s += double(q[(i * H + h) * D + d]) * k[(j * H + h) * D + d];
        w[j] = s * p.scale;
        m = std::fmax(m, w[j]);
      }
      for (auto& x : w) sum += (x = std::exp(x - m));
      for (int64_t d = 0; d < D; ++d) {
        double o = 0;
        for (int64_t j = 0; j <= i; ++j) o += w[j] / sum * v[(j * H + h) * D + d];
        worst = std::fmax(worst, std::fabs(o - out[(i * H + h) * D + d]));
      }
    }
  if (worst > 1e-5) {
    std::printf("CPU attention is off by %g\n", worst);
    return 1;
  }
  std::printf("longattn %s from the installed package: CPU attention ok (max error %.2g)\n", longattn::version(),
              worst);
  const char* no_gpu = std::getenv("LONGATTN_CONSUMER_NO_GPU");
  if (no_gpu && std::strcmp(no_gpu, "1") == 0) {
    p.device = longattn::Device::kCuda;
    const longattn::Status cuda = longattn::attention_forward(p);
    if (cuda.code != longattn::StatusCode::kUnsupported) {
      std::printf("a CUDA request without a GPU gave status %d: %s\n", int(cuda.code), cuda.message.c_str());
      return 1;
    }
    std::printf("CUDA request without a GPU: unsupported, as it should be: %s\n", cuda.message.c_str());
  }
  return 0;
}
