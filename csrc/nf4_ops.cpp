// torch.library ops `coalm::nf4_dequantize`, `coalm::nf4_linear`, `coalm::nf4_quantize` and `coalm::nf4_isa`: argument checks, the choice
// of instruction set, threads over output rows (at::parallel_for, which follows torch.get_num_threads()), and a
// Meta implementation so that the ops trace under torch.compile / FakeTensor.
//
// ISA: "auto" takes $COALM_NATIVE_ISA when set, else the best the CPU reports (avx512 > avx2 > scalar). Naming a
// level the CPU lacks raises instead of faulting. nf4_linear decodes W inside the matmul for up to `fused_max_m`
// rows of x (decode, small batches: every weight byte is read once per call); above that it dequantizes W once
// and hands the product to torch's sgemm, which wins once the weight is reused by many rows (prefill).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <string>

#include "nf4_kernels.h"

namespace coalm_nf4 {
namespace {

constexpr const char* kLayout =
    "bitsandbytes NF4: packed uint8 (ceil(numel / 2)), two codes per byte, high nibble first; absmax uint8 "
    "(n_blocks) with absmax2 fp32 (ceil(n_blocks / 256)), code2 fp32 (256) and offset fp32 (1), or absmax fp32 "
    "(n_blocks) alone; code fp32 (16); blocksize a power of two in [32, 4096]";

enum Isa { SCALAR = 0, AVX2 = 1, AVX512 = 2 };
const char* kIsaNames[] = {"scalar", "avx2", "avx512"};

int cpu_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma"))
    return AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) return AVX2;
  return SCALAR;
}

int resolve_isa(const char* op, std::string name) {
  static const int best = cpu_isa();
  if (name == "auto") {
    const char* env = std::getenv("COALM_NATIVE_ISA");
    if (env == nullptr || *env == '\0') return best;
    name = env;
  }
  for (int i = 0; i < 3; ++i) {
    if (name == kIsaNames[i]) {
      TORCH_CHECK(i <= best, "coalm::", op, ": ISA '", name, "' requested (argument or $COALM_NATIVE_ISA), but this CPU ",
                  "supports at most '", kIsaNames[best], "'");
      return i;
    }
  }
  TORCH_CHECK(false, "coalm::", op, ": unknown ISA '", name, "'; choose auto, avx512, avx2 or scalar");
}

struct Checked {
  NF4 q;
  at::Tensor keep[6];  // contiguous copies that q points into
};

Checked check_nf4(const char* op, const at::Tensor& packed, const at::Tensor& absmax, const at::Tensor& code,
                  const std::optional<at::Tensor>& absmax2, const std::optional<at::Tensor>& code2,
                  const std::optional<at::Tensor>& offset, int64_t blocksize, int64_t numel) {
  TORCH_CHECK(blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0, "coalm::", op,
              ": blocksize ", blocksize, " not supported; expected layout: ", kLayout);
  TORCH_CHECK(numel > 0, "coalm::", op, ": empty weight");
  const int64_t nblocks = (numel + blocksize - 1) / blocksize;
  auto want = [&](const at::Tensor& t, const char* name, at::ScalarType dt, int64_t n) {
    TORCH_CHECK(t.device().is_cpu(), "coalm::", op, ": ", name, " is on ", t.device(), "; these are CPU ops");
    TORCH_CHECK(t.scalar_type() == dt && t.numel() == n, "coalm::", op, ": ", name, " is ", t.scalar_type(), " with ",
                t.numel(), " elements, expected ", dt, " with ", n, " for a weight of ", numel,
                " values; expected layout: ", kLayout);
  };
  Checked c;
  want(packed, "packed", at::kByte, (numel + 1) / 2);
  want(code, "code", at::kFloat, 16);
  c.keep[0] = packed.contiguous();
  c.keep[1] = code.contiguous();
  c.q.packed = c.keep[0].data_ptr<uint8_t>();
  c.q.code = c.keep[1].data_ptr<float>();
  c.q.blocksize = blocksize;
  const bool dq = absmax2.has_value();
  TORCH_CHECK(dq == code2.has_value() && dq == offset.has_value(), "coalm::", op,
              ": absmax2, code2 and offset go together (double quantization); expected layout: ", kLayout);
  if (dq) {
    want(absmax, "absmax", at::kByte, nblocks);
    want(*absmax2, "absmax2", at::kFloat, (nblocks + 255) / 256);
    want(*code2, "code2", at::kFloat, 256);
    want(*offset, "offset", at::kFloat, 1);
    c.keep[2] = absmax.contiguous();
    c.keep[3] = absmax2->contiguous();
    c.keep[4] = code2->contiguous();
    c.q.qabsmax = c.keep[2].data_ptr<uint8_t>();
    c.q.absmax_f32 = nullptr;
    c.q.absmax2 = c.keep[3].data_ptr<float>();
    c.q.code2 = c.keep[4].data_ptr<float>();
    c.q.offset = offset->item<float>();
  } else {
    want(absmax, "absmax", at::kFloat, nblocks);
    c.keep[2] = absmax.contiguous();
    c.q.qabsmax = nullptr;
    c.q.absmax_f32 = c.keep[2].data_ptr<float>();
    c.q.absmax2 = c.q.code2 = nullptr;
    c.q.offset = 0.f;
  }
  return c;
}

void dequant_into(const NF4& q, int64_t numel, void* out, int kind, int isa) {
  const int64_t nblocks = (numel + q.blocksize - 1) / q.blocksize;
  const int64_t grain = 1 + 32768 / q.blocksize;  // ~32k values per task
  at::parallel_for(0, nblocks, grain, [&](int64_t b0, int64_t b1) {
    if (isa == AVX512) dequant_avx512(q, b0, b1, numel, out, kind);
    else if (isa == AVX2) dequant_avx2(q, b0, b1, numel, out, kind);
    else dequant_scalar(q, b0, b1, numel, out, kind);
  });
}

at::Tensor nf4_dequantize(const at::Tensor& packed, const at::Tensor& absmax, const at::Tensor& code,
                          const std::optional<at::Tensor>& absmax2, const std::optional<at::Tensor>& code2,
                          const std::optional<at::Tensor>& offset, int64_t blocksize, at::IntArrayRef shape,
                          at::ScalarType dtype, std::string isa) {
  const char* op = "nf4_dequantize";
  const int level = resolve_isa(op, isa);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, "coalm::", op, ": dtype ", dtype,
              " not supported; choose float32, bfloat16 or float16");
  int64_t numel = 1;
  for (auto s : shape) numel *= s;
  Checked c = check_nf4(op, packed, absmax, code, absmax2, code2, offset, blocksize, numel);
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(dtype));
  const int kind = dtype == at::kFloat ? OUT_F32 : dtype == at::kBFloat16 ? OUT_BF16 : OUT_F16;
  dequant_into(c.q, numel, out.data_ptr(), kind, level);
  return out;
}

at::Tensor nf4_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax, const at::Tensor& code,
                      const std::optional<at::Tensor>& absmax2, const std::optional<at::Tensor>& code2,
                      const std::optional<at::Tensor>& offset, int64_t blocksize, int64_t n, int64_t k,
                      std::string isa, int64_t fused_max_m) {
  const char* op = "nf4_linear";
  const int level = resolve_isa(op, isa);
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "coalm::", op, ": x must be a float32 CPU tensor, ",
              "got ", x.scalar_type(), " on ", x.device());
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == k, "coalm::", op, ": x has shape ", x.sizes(), "; its last dim must be K=",
              k, " for a weight of shape (N=", n, ", K=", k, ")");
  TORCH_CHECK(n > 0 && k > 0, "coalm::", op, ": weight shape (", n, ", ", k, ") is empty");
  Checked c = check_nf4(op, packed, absmax, code, absmax2, code2, offset, blocksize, n * k);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n;
  const at::Tensor x2 = x.reshape({-1, k}).contiguous();
  const int64_t M = x2.size(0);
  if (M == 0) return at::empty(out_shape, x.options());
  if (M > fused_max_m || k % blocksize != 0) {
    // many rows reuse each weight (sgemm's blocking wins), or blocks straddle rows (no per-row block walk)
    at::Tensor w = at::empty({n, k}, x.options());
    dequant_into(c.q, n * k, w.data_ptr(), OUT_F32, level);
    return at::matmul(x2, w.t()).view(out_shape);
  }
  at::Tensor y = at::empty({M, n}, x.options());
  at::Tensor xs = x2;
  if (level != SCALAR) {  // K % blocksize == 0 here, so K is a multiple of 32
    xs = at::empty({M, k}, x.options());
    split_x(x2.data_ptr<float>(), M, k, xs.data_ptr<float>());
  }
  const float* xp = xs.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t grain = 1 + 65536 / k;  // ~64k weights per task
  at::parallel_for(0, n, grain, [&](int64_t n0, int64_t n1) {
    if (level == AVX512) linear_avx512(c.q, xp, M, k, n, n0, n1, yp);
    else if (level == AVX2) linear_avx2(c.q, xp, M, k, n, n0, n1, yp);
    else linear_scalar(c.q, xp, M, k, n, n0, n1, yp);
  });
  return y.view(out_shape);
}

// NF4 quantization of fp32 `w` (flat) with bitsandbytes' CPU rules (coalm_kernels/nf4.py quantize_nf4): absmax = max |w|
// per block; a full block is scaled by the fp32 reciprocal of its absmax, a short last block divided by it; clamped to
// [-1, 1]; the code is the number of code-book midpoints `mids` strictly below (ties go low). Returns (packed, absmax).
std::tuple<at::Tensor, at::Tensor> nf4_quantize(const at::Tensor& w, const at::Tensor& mids, int64_t blocksize) {
  const char* op = "nf4_quantize";
  TORCH_CHECK(blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0, "coalm::", op,
              ": blocksize ", blocksize, " not supported; expected a power of two in [32, 4096]");
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kFloat && w.numel() > 0 &&
                  mids.scalar_type() == at::kFloat && mids.numel() == 15,
              "coalm::", op, ": expected a non-empty fp32 CPU weight and fp32 mids (15)");
  const int64_t n = w.numel(), nblocks = (n + blocksize - 1) / blocksize;
  const at::Tensor wc = w.contiguous(), mc = mids.contiguous();
  const float* wp = wc.data_ptr<float>();
  float mid[15];
  for (int i = 0; i < 15; ++i) mid[i] = mc.data_ptr<float>()[i];
  at::Tensor packed = at::empty({(n + 1) / 2}, at::TensorOptions().dtype(at::kByte));
  at::Tensor absmax = at::empty({nblocks}, at::TensorOptions().dtype(at::kFloat));
  uint8_t* out = packed.data_ptr<uint8_t>();
  float* ap = absmax.data_ptr<float>();
  at::parallel_for(0, nblocks, 1 + 32768 / blocksize, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t lo = b * blocksize, hi = (lo + blocksize < n) ? lo + blocksize : n;
      float amax = 0.f;
      for (int64_t i = lo; i < hi; ++i) amax = std::fabs(wp[i]) > amax ? std::fabs(wp[i]) : amax;
      ap[b] = amax;
      const float a = amax > 1e-38f ? amax : 1e-38f;
      const bool full = hi - lo == blocksize;
      const float recip = 1.0f / a;
      for (int64_t i = lo; i < hi; i += 2) {
        uint8_t c[2] = {7, 7};  // an odd count is padded with the code of 0.0
        for (int64_t j = 0; j < 2 && i + j < hi; ++j) {
          float v = full ? wp[i + j] * recip : wp[i + j] / a;
          v = v < -1.f ? -1.f : (v > 1.f ? 1.f : v);
          int idx = mid[7] < v ? 8 : 0;  // binary search of the 15 sorted midpoints: how many lie below v
          idx += mid[idx + 3] < v ? 4 : 0;
          idx += mid[idx + 1] < v ? 2 : 0;
          idx += mid[idx] < v ? 1 : 0;
          c[j] = static_cast<uint8_t>(idx);
        }
        out[i / 2] = static_cast<uint8_t>(c[0] << 4 | c[1]);
      }
    }
  });
  return {packed, absmax};
}

at::Tensor nf4_dequantize_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                               const std::optional<at::Tensor>&, int64_t, at::IntArrayRef shape, at::ScalarType dtype,
                               std::string) {
  return at::empty(shape, at::TensorOptions().dtype(dtype).device(at::kMeta));
}

at::Tensor nf4_linear_meta(const at::Tensor& x, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                           const std::optional<at::Tensor>&, int64_t, int64_t n, int64_t k, std::string, int64_t) {
  TORCH_CHECK(x.size(-1) == k, "coalm::nf4_linear: x has shape ", x.sizes(), "; its last dim must be K=", k);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n;
  return at::empty(out_shape, x.options().device(at::kMeta));
}

std::string nf4_isa(std::string isa) { return kIsaNames[resolve_isa("nf4_isa", isa)]; }

}  // namespace
}  // namespace coalm_nf4

TORCH_LIBRARY(coalm, m) {
  m.def("nf4_dequantize(Tensor packed, Tensor absmax, Tensor code, Tensor? absmax2, Tensor? code2, Tensor? offset, "
        "int blocksize, int[] shape, ScalarType dtype, str isa='auto') -> Tensor");
  m.def("nf4_linear(Tensor x, Tensor packed, Tensor absmax, Tensor code, Tensor? absmax2, Tensor? code2, "
        "Tensor? offset, int blocksize, int n, int k, str isa='auto', int fused_max_m=16) -> Tensor");
  m.def("nf4_quantize(Tensor w, Tensor mids, int blocksize) -> (Tensor, Tensor)");
  m.def("nf4_isa(str isa='auto') -> str", &coalm_nf4::nf4_isa);
}

TORCH_LIBRARY_IMPL(coalm, CPU, m) {
  m.impl("nf4_dequantize", &coalm_nf4::nf4_dequantize);
  m.impl("nf4_linear", &coalm_nf4::nf4_linear);
  m.impl("nf4_quantize", &coalm_nf4::nf4_quantize);
}

TORCH_LIBRARY_IMPL(coalm, Meta, m) {
  m.impl("nf4_dequantize", &coalm_nf4::nf4_dequantize_meta);
  m.impl("nf4_linear", &coalm_nf4::nf4_linear_meta);
}
