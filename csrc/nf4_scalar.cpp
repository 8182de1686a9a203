// Portable NF4 kernels: the path for CPUs without AVX2+FMA, and the tail (short last block, odd element count)
// of the vector paths. Built without ISA flags.
#include <c10/util/Half.h>

#include "nf4_kernels.h"

namespace coalm_nf4 {

static inline float value_at(const NF4& q, int64_t i, float scale) {
  uint8_t byte = q.packed[i >> 1];
  return q.code[(i & 1) ? (byte & 15) : (byte >> 4)] * scale;
}

void dequant_scalar(const NF4& q, int64_t b0, int64_t b1, int64_t numel, void* out, int kind) {
  for (int64_t b = b0; b < b1; ++b) {
    const float s = block_scale(q, b);
    const int64_t lo = b * q.blocksize, hi = (lo + q.blocksize < numel) ? lo + q.blocksize : numel;
    for (int64_t i = lo; i < hi; ++i) {
      const float w = value_at(q, i, s);
      if (kind == OUT_F32) {
        static_cast<float*>(out)[i] = w;
      } else if (kind == OUT_BF16) {
        static_cast<uint16_t*>(out)[i] = bf16_bits(w);
      } else {
        static_cast<c10::Half*>(out)[i] = c10::Half(w);  // round to nearest even
      }
    }
  }
}

void linear_scalar(const NF4& q, const float* x, int64_t M, int64_t K, int64_t N, int64_t n0, int64_t n1, float* y) {
  // 16 partial sums, as the vector paths keep: one running sum over K would grow fp32 error with K.
  const int64_t bs = q.blocksize, nbk = K / bs;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m = 0; m < M; ++m) {
      const float* xr = x + m * K;
      float acc[16] = {0.f};
      for (int64_t kb = 0; kb < nbk; ++kb) {
        const float s = block_scale(q, n * nbk + kb);
        const uint8_t* p = q.packed + (n * K + kb * bs) / 2;
        for (int64_t j = 0; j < bs / 2; ++j) {
          acc[(2 * j) & 15] += q.code[p[j] >> 4] * s * xr[kb * bs + 2 * j];
          acc[(2 * j + 1) & 15] += q.code[p[j] & 15] * s * xr[kb * bs + 2 * j + 1];
        }
      }
      float sum = 0.f;
      for (int i = 0; i < 16; ++i) sum += acc[i];
      y[m * N + n] = sum;
    }
  }
}

}  // namespace coalm_nf4
