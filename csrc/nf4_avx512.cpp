// AVX-512 (F + BW + VL) NF4 kernels. Built with -mavx512f -mavx512bw -mavx512vl -mfma; called only when the CPU
// reports those flags (nf4_ops.cpp).
//
// 16 packed bytes hold 32 values; a code is looked up in the 16-entry code book held in one register (vpermps), and
// each value is code * scale rounded once in fp32: the number bitsandbytes' dequantization gives, so the matmul
// multiplies x by exactly dequant(W). Dequantization interleaves the nibbles back into value order (two byte
// unpacks); the matmul instead takes x split into even and odd positions once per call (split_x), which saves those
// shuffles in its inner loop: shuffles, not memory, bound a single core here.
#include <immintrin.h>

#include "nf4_kernels.h"

namespace coalm_nf4 {
namespace {

inline void lookup32(const uint8_t* p, __m512 table, __m512 scale, __m512& v0, __m512& v1) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i nib = _mm_set1_epi8(0x0F);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), nib);
  const __m128i lo = _mm_and_si128(bytes, nib);
  v0 = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo)), table), scale);
  v1 = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(hi, lo)), table), scale);
}

inline __m256i to_bf16(__m512 v) {  // round to nearest even on the bits (vcvtneps2bf16 would flush denormals)
  const __m512i b = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

inline void store16(void* out, int64_t i, __m512 v, int kind) {
  if (kind == OUT_F32) {
    _mm512_storeu_ps(static_cast<float*>(out) + i, v);
  } else if (kind == OUT_BF16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + i), to_bf16(v));
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + i),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

// 16 bytes -> the 16 high-nibble values (even positions of the 32) and the 16 low-nibble values (odd positions), each
// code * scale: one widening and two lookups, against x pre-split the same way (x_split), no interleaving shuffles.
inline void lookup_split(const uint8_t* p, __m512 table, __m512 scale, __m512& even, __m512& odd) {
  const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  even = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), table), scale);
  odd = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(idx, _mm512_set1_epi32(15)), table), scale);
}

// MR rows of x (split layout) against output columns [n0, n1): each 32-value chunk of W is decoded once, used MR times.
// S independent accumulator sets take turns chunk by chunk: with few rows the FMA latency, not throughput, would
// bound the loop on one chain per register.
template <int MR>
void rows(const NF4& q, const float* x, int64_t K, int64_t N, int64_t n0, int64_t n1, float* y) {
  constexpr int S = MR <= 4 ? 2 : 1;
  const __m512 table = _mm512_loadu_ps(q.code);
  const int64_t bs = q.blocksize, nbk = K / bs;
  for (int64_t n = n0; n < n1; ++n) {
    __m512 acc[S][MR][2];
    for (int u = 0; u < S; ++u)
      for (int m = 0; m < MR; ++m) acc[u][m][0] = acc[u][m][1] = _mm512_setzero_ps();
    const uint8_t* p = q.packed + n * (K / 2);
    int64_t blk = -1;
    __m512 scale = _mm512_setzero_ps();
    auto chunk = [&](int64_t c, int u) __attribute__((always_inline)) {
      if (c / bs != blk) {
        blk = c / bs;
        scale = _mm512_set1_ps(block_scale(q, n * nbk + blk));
      }
      __m512 we, wo;
      lookup_split(p + c / 2, table, scale, we, wo);
      for (int m = 0; m < MR; ++m) {
        acc[u][m][0] = _mm512_fmadd_ps(we, _mm512_loadu_ps(x + m * K + c), acc[u][m][0]);
        acc[u][m][1] = _mm512_fmadd_ps(wo, _mm512_loadu_ps(x + m * K + c + 16), acc[u][m][1]);
      }
    };
    int64_t c = 0;
    for (; c + 32 * S <= K; c += 32 * S)
      for (int u = 0; u < S; ++u) chunk(c + 32 * u, u);
    for (; c < K; c += 32) chunk(c, 0);
    for (int m = 0; m < MR; ++m) {
      __m512 t = _mm512_add_ps(acc[0][m][0], acc[0][m][1]);
      for (int u = 1; u < S; ++u) t = _mm512_add_ps(t, _mm512_add_ps(acc[u][m][0], acc[u][m][1]));
      y[m * N + n] = _mm512_reduce_add_ps(t);
    }
  }
}

}  // namespace

void dequant_avx512(const NF4& q, int64_t b0, int64_t b1, int64_t numel, void* out, int kind) {
  const __m512 table = _mm512_loadu_ps(q.code);
  const int64_t bs = q.blocksize;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t lo = b * bs;
    if (lo + bs > numel) {  // the short last block
      dequant_scalar(q, b, b + 1, numel, out, kind);
      continue;
    }
    const __m512 scale = _mm512_set1_ps(block_scale(q, b));
    for (int64_t j = 0; j < bs; j += 32) {
      __m512 v0, v1;
      lookup32(q.packed + (lo + j) / 2, table, scale, v0, v1);
      store16(out, lo + j, v0, kind);
      store16(out, lo + j + 16, v1, kind);
    }
  }
}

void linear_avx512(const NF4& q, const float* x, int64_t M, int64_t K, int64_t N, int64_t n0, int64_t n1, float* y) {
  int64_t m = 0;
  for (; m + 8 <= M; m += 8) rows<8>(q, x + m * K, K, N, n0, n1, y + m * N);
  const int64_t r = M - m;
  if (r >= 4) rows<4>(q, x + m * K, K, N, n0, n1, y + m * N), m += 4;
  if (M - m >= 2) rows<2>(q, x + m * K, K, N, n0, n1, y + m * N), m += 2;
  if (M - m == 1) rows<1>(q, x + m * K, K, N, n0, n1, y + m * N);
}

}  // namespace coalm_nf4
