// NF4 kernels over raw pointers, one set per instruction set (nf4_scalar.cpp, nf4_avx2.cpp, nf4_avx512.cpp).
//
// The ISA files are compiled with their own -m flags and include no torch header: an inline torch function compiled
// there with AVX-512 could be the copy the linker keeps for the whole library, and would then fault on an AVX2 CPU.
// For the same reason every helper in this header is `static inline` (one private copy per file).
//
// Layout (bitsandbytes NF4, see coalm_kernels/nf4.py): the weight, flattened row-major, is cut into blocks of `blocksize`
// values, two 4-bit codes per byte (first value in the high nibble); block b's scale is either fp32 absmax[b] or,
// double-quantized, code2[qabsmax[b]] * absmax2[b / 256] + offset (two fp32 roundings, as bitsandbytes: every
// file is built with -ffp-contract=off so that the compiler does not fuse them).
#pragma once
#include <cstdint>

namespace coalm_nf4 {

struct NF4 {
  const uint8_t* packed;
  const uint8_t* qabsmax;   // double-quantized scales (8-bit codes), or nullptr
  const float* absmax_f32;  // plain fp32 scales when qabsmax is nullptr
  const float* absmax2;
  const float* code2;
  float offset;
  const float* code;  // the 16 NF4 values
  int64_t blocksize;
};

enum OutKind { OUT_F32 = 0, OUT_BF16 = 1, OUT_F16 = 2 };

static inline float block_scale(const NF4& q, int64_t b) {
  if (!q.qabsmax) return q.absmax_f32[b];
  float s = q.code2[q.qabsmax[b]] * q.absmax2[b >> 8];
  return s + q.offset;
}

// fp32 -> bf16 bits, round to nearest even (as torch's .to(bfloat16) for finite values).
static inline uint16_t bf16_bits(float f) {
  union { float f; uint32_t u; } v{f};
  return static_cast<uint16_t>((v.u + 0x7FFFu + ((v.u >> 16) & 1u)) >> 16);
}

// Dequantize quantization blocks [b0, b1) into `out` (the flat weight, `numel` values; the last block may be short).
void dequant_scalar(const NF4& q, int64_t b0, int64_t b1, int64_t numel, void* out, int kind);
void dequant_avx2(const NF4& q, int64_t b0, int64_t b1, int64_t numel, void* out, int kind);
void dequant_avx512(const NF4& q, int64_t b0, int64_t b1, int64_t numel, void* out, int kind);

// y[m, n] = sum_k x[m, k] * W[n, k] for output columns n in [n0, n1); x (M, K), y (M, N), both row-major fp32.
// Needs K % blocksize == 0 (quantization blocks inside rows). The vector paths take x in the split layout
// (split_x): within each 32 values, the 16 at even positions, then the 16 at odd positions, which is the order the
// high and low nibbles of 16 packed bytes come in; the scalar path takes x as it is.
static inline void split_x(const float* x, int64_t M, int64_t K, float* out) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < K; c += 32)
      for (int64_t i = 0; i < 16; ++i) {
        out[m * K + c + i] = x[m * K + c + 2 * i];
        out[m * K + c + 16 + i] = x[m * K + c + 2 * i + 1];
      }
}
void linear_scalar(const NF4& q, const float* x, int64_t M, int64_t K, int64_t N, int64_t n0, int64_t n1, float* y);
void linear_avx2(const NF4& q, const float* x, int64_t M, int64_t K, int64_t N, int64_t n0, int64_t n1, float* y);
void linear_avx512(const NF4& q, const float* x, int64_t M, int64_t K, int64_t N, int64_t n0, int64_t n1, float* y);

}  // namespace coalm_nf4
