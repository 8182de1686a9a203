"""The native CPU ops (`csrc/`, built by the top-level CMakeLists.txt into `coalm_kernels._C`), as Python functions.

    nf4_linear(x, q)          y = x @ dequant(q)^T for fp32 x (..., K) and an NF4 weight q (N, K) -> (..., N)
    nf4_dequantize(q, dtype)  dequant(q) in fp32 / bf16 / fp16, bit-exact with bitsandbytes and `dequantize_nf4_ref`
    nf4_quantize(flat, ...)   codes and absmaxes of `coalm_kernels.nf4.quantize_nf4` (bitsandbytes' CPU rules): its CPU path
    isa()                     the instruction set the ops run with: "avx512", "avx2" or "scalar"

Both take `isa="auto"` (the best the CPU has, or $COALM_NATIVE_ISA) or a level to force ("avx2" on an AVX-512
machine tests that path; a level the CPU lacks raises). `nf4_linear` decodes the weight inside its matmul for up to
`fused_max_m` rows of x and dequantizes once + sgemm above that (prefill). Threads: torch.get_num_threads().

There is no fallback: when the extension was not built, every function raises `NativeOpsMissing` naming the build
step. The plain-torch references (`coalm_kernels.nf4.dequantize_nf4_ref`, `coalm_kernels.lora_matmul.lora_linear_ref`) are
for tests. This module imports nothing from `coalm_kernels.nf4` (which calls it); `q` is any object with NF4Weight's fields.
"""

from __future__ import annotations

import torch

BUILD_HINT = "build it with `pip install -e .` (or `make .venv/.installed`) in the repository root"
FUSED_MAX_M = 16  # rows of x up to which nf4_linear decodes W inside the matmul (bench/test_native_ops.py)


class NativeOpsMissing(RuntimeError):
    """The compiled extension `coalm_kernels._C` is not importable."""


_ops = None


def ops():
    """torch.ops.coalm, after loading the extension that registers it."""
    global _ops
    if _ops is None:
        try:
            import coalm_kernels._C  # noqa: F401 - importing registers the coalm:: ops
        except ImportError as e:
            raise NativeOpsMissing(f"the native CPU ops (coalm_kernels._C) are not built: {BUILD_HINT} ({e})") from e
        _ops = torch.ops.coalm
    return _ops


def available() -> bool:
    try:
        ops()
        return True
    except NativeOpsMissing:
        return False


def isa(level: str = "auto") -> str:
    return ops().nf4_isa(level)


def _args(q):
    if q.double_quant:
        return q.packed, q.absmax, q.code, q.absmax2, q.code2, q.offset.reshape(1)
    return q.packed, q.absmax, q.code, None, None, None


def nf4_dequantize(q, dtype: torch.dtype | None = None, isa: str = "auto") -> torch.Tensor:
    """The weight of `q` in `dtype` (default: the dtype it was quantized from)."""
    return ops().nf4_dequantize(*_args(q), q.blocksize, list(q.shape), dtype or q.dtype, isa)


def nf4_quantize(flat: torch.Tensor, mids: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed NF4 codes, fp32 block absmaxes) of fp32 `flat`, by the rules of `coalm_kernels.nf4.quantize_nf4`."""
    return ops().nf4_quantize(flat, mids, blocksize)


def nf4_linear(x: torch.Tensor, q, isa: str = "auto", fused_max_m: int = FUSED_MAX_M) -> torch.Tensor:
    """x @ dequant(q)^T for a 2-D NF4 weight q (N, K); x fp32 (..., K)."""
    if len(q.shape) != 2:
        raise ValueError(f"coalm::nf4_linear: the weight must be 2-D (N, K), got shape {tuple(q.shape)}")
    n, k = q.shape
    return ops().nf4_linear(x, *_args(q), q.blocksize, n, k, isa, fused_max_m)
