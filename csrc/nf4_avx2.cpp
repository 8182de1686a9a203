// AVX2 + FMA + F16C NF4 kernels. Built with -mavx2 -mfma -mf16c; called only when the CPU reports those flags.
//
// Same scheme as nf4_avx512.cpp, with 8-lane registers: AVX2 has no 16-entry permute, so a code is looked up in
// both halves of the code book (two vpermps on its low 3 bits) and bit 3 of the index picks one (vblendvps on the
// index shifted into the sign bit).
#include <immintrin.h>

#include "nf4_kernels.h"

namespace coalm_nf4 {
namespace {

struct Table {
  __m256 lo, hi;
};

inline __m256 lut(const Table& t, __m256i idx) {
  const __m256 a = _mm256_permutevar8x32_ps(t.lo, idx);
  const __m256 b = _mm256_permutevar8x32_ps(t.hi, idx);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// 16 packed bytes -> the 32 values in order, as four 8-lane vectors, each code * scale rounded once.
inline void lookup32(const uint8_t* p, const Table& t, __m256 scale, __m256 v[4]) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i nib = _mm_set1_epi8(0x0F);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), nib);
  const __m128i lo = _mm_and_si128(bytes, nib);
  const __m128i i0 = _mm_unpacklo_epi8(hi, lo), i1 = _mm_unpackhi_epi8(hi, lo);
  v[0] = _mm256_mul_ps(lut(t, _mm256_cvtepu8_epi32(i0)), scale);
  v[1] = _mm256_mul_ps(lut(t, _mm256_cvtepu8_epi32(_mm_srli_si128(i0, 8))), scale);
  v[2] = _mm256_mul_ps(lut(t, _mm256_cvtepu8_epi32(i1)), scale);
  v[3] = _mm256_mul_ps(lut(t, _mm256_cvtepu8_epi32(_mm_srli_si128(i1, 8))), scale);
}

inline __m256i bf16_round(__m256 v) {  // fp32 bits rounded to nearest even, bf16 in the low half of each lane
  const __m256i b = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  return _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
}

inline void store16(void* out, int64_t i, __m256 a, __m256 b, int kind) {
  if (kind == OUT_F32) {
    _mm256_storeu_ps(static_cast<float*>(out) + i, a);
    _mm256_storeu_ps(static_cast<float*>(out) + i + 8, b);
  } else if (kind == OUT_BF16) {
    // packus works within 128-bit lanes: [a0-3, b0-3, a4-7, b4-7]; reorder the 64-bit quarters to a, b
    const __m256i packed = _mm256_packus_epi32(bf16_round(a), bf16_round(b));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + i),
                        _mm256_permute4x64_epi64(packed, 0xD8));
  } else {
    const int r = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + i), _mm256_cvtps_ph(a, r));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + i + 8), _mm256_cvtps_ph(b, r));
  }
}

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// 16 bytes -> high-nibble values (even positions) and low-nibble values (odd positions), 8 + 8 each, code * scale,
// against x pre-split the same way (x_split): no interleaving shuffles.
inline void lookup_split(const uint8_t* p, const Table& t, __m256 scale, __m256 v[4]) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i i0 = _mm256_cvtepu8_epi32(bytes), i1 = _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8));
  const __m256i nib = _mm256_set1_epi32(15);
  v[0] = _mm256_mul_ps(lut(t, _mm256_srli_epi32(i0, 4)), scale);  // even positions 0..14
  v[1] = _mm256_mul_ps(lut(t, _mm256_srli_epi32(i1, 4)), scale);  // even positions 16..30
  v[2] = _mm256_mul_ps(lut(t, _mm256_and_si256(i0, nib)), scale);  // odd positions 1..15
  v[3] = _mm256_mul_ps(lut(t, _mm256_and_si256(i1, nib)), scale);  // odd positions 17..31
}

// S independent accumulator sets take turns chunk by chunk (FMA latency bounds one chain per register); AVX2 has
// 16 registers, so only for MR <= 2.
template <int MR>
void rows(const NF4& q, const float* x, int64_t K, int64_t N, int64_t n0, int64_t n1, float* y) {
  constexpr int S = MR <= 2 ? 2 : 1;
  const Table t{_mm256_loadu_ps(q.code), _mm256_loadu_ps(q.code + 8)};
  const int64_t bs = q.blocksize, nbk = K / bs;
  for (int64_t n = n0; n < n1; ++n) {
    __m256 acc[S][MR][2];
    for (int u = 0; u < S; ++u)
      for (int m = 0; m < MR; ++m) acc[u][m][0] = acc[u][m][1] = _mm256_setzero_ps();
    const uint8_t* p = q.packed + n * (K / 2);
    int64_t blk = -1;
    __m256 scale = _mm256_setzero_ps();
    auto chunk = [&](int64_t c, int u) __attribute__((always_inline)) {
      if (c / bs != blk) {
        blk = c / bs;
        scale = _mm256_set1_ps(block_scale(q, n * nbk + blk));
      }
      __m256 w[4];
      lookup_split(p + c / 2, t, scale, w);
      const float* xk = x + c;  // split layout: 16 even-position values, then 16 odd-position ones
      for (int m = 0; m < MR; ++m) {
        acc[u][m][0] = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xk + m * K), acc[u][m][0]);
        acc[u][m][1] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xk + m * K + 8), acc[u][m][1]);
        acc[u][m][0] = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xk + m * K + 16), acc[u][m][0]);
        acc[u][m][1] = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xk + m * K + 24), acc[u][m][1]);
      }
    };
    int64_t c = 0;
    for (; c + 32 * S <= K; c += 32 * S)
      for (int u = 0; u < S; ++u) chunk(c + 32 * u, u);
    for (; c < K; c += 32) chunk(c, 0);
    for (int m = 0; m < MR; ++m) {
      __m256 s = _mm256_add_ps(acc[0][m][0], acc[0][m][1]);
      for (int u = 1; u < S; ++u) s = _mm256_add_ps(s, _mm256_add_ps(acc[u][m][0], acc[u][m][1]));
      y[m * N + n] = hsum(s);
    }
  }
}

}  // namespace

void dequant_avx2(const NF4& q, int64_t b0, int64_t b1, int64_t numel, void* out, int kind) {
  const Table t{_mm256_loadu_ps(q.code), _mm256_loadu_ps(q.code + 8)};
  const int64_t bs = q.blocksize;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t lo = b * bs;
    if (lo + bs > numel) {  // the short last block
      dequant_scalar(q, b, b + 1, numel, out, kind);
      continue;
    }
    const __m256 scale = _mm256_set1_ps(block_scale(q, b));
    for (int64_t j = 0; j < bs; j += 32) {
      __m256 v[4];
      lookup32(q.packed + (lo + j) / 2, t, scale, v);
      store16(out, lo + j, v[0], v[1], kind);
      store16(out, lo + j + 16, v[2], v[3], kind);
    }
  }
}

void linear_avx2(const NF4& q, const float* x, int64_t M, int64_t K, int64_t N, int64_t n0, int64_t n1, float* y) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) rows<4>(q, x + m * K, K, N, n0, n1, y + m * N);
  if (M - m >= 2) rows<2>(q, x + m * K, K, N, n0, n1, y + m * N), m += 2;
  if (M - m == 1) rows<1>(q, x + m * K, K, N, n0, n1, y + m * N);
}

}  // namespace coalm_nf4
