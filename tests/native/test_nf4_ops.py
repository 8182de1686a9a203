"""The compiled NF4 ops (csrc/, `coalm_kernels.native`) against independent references, on every ISA this CPU has.

- nf4_linear vs fp64 x @ dequant(W)^T within 2x torch's own fp32 error (tests/kernels/error_bound.py), M = 1, 3, 17,
  odd N, K a multiple of the block size (the fused decode path) and not (blocks straddle rows), both the fused path
  and the dequantize + sgemm path.
- nf4_dequantize bit-exact vs the plain-torch reference and vs bitsandbytes' dequantize_4bit (short last block,
  odd numel, all-zero block, with and without double quantization).
- bad input raises naming the op and the layout; a missing build raises naming the build step; Meta shapes.
Each ISA below the CPU's best is forced through the op's `isa` argument ($COALM_NATIVE_ISA does the same).
"""

import sys

import pytest
import torch

from coalm_kernels import native
from coalm_kernels.nf4 import NF4Weight, dequantize_nf4_ref, quantize_nf4
from tests.kernels.error_bound import assert_within_torch_error

bnbf = pytest.importorskip("bitsandbytes.functional")

LEVELS = ("scalar", "avx2", "avx512")
ISAS = LEVELS[: LEVELS.index(native.isa()) + 1]  # every path this CPU can run
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _weight(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02
    w.view(-1)[:64] = 0  # an all-zero block (absmax 0)
    w.view(-1)[-1] = 0.5  # an outlier block
    return w.to(dtype)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,k", [(97, 320), (33, 200), (5, 1)])  # K % 64 == 0 (fused), K = 200 / 1: blocks straddle rows
def test_linear_within_torch_error(isa, n, k):
    q = quantize_nf4(_weight((n, k), seed=n + k))
    w = dequantize_nf4_ref(q, torch.float32)
    g = torch.Generator().manual_seed(k)
    for m in (1, 3, 17):
        x = torch.randn(m, k, generator=g)
        ref64 = x.double() @ w.double().T
        peer = x @ w.T
        for fused_max_m in (64, 0):  # decode inside the matmul / dequantize + sgemm
            y = native.nf4_linear(x, q, isa=isa, fused_max_m=fused_max_m)
            assert y.shape == (m, n) and y.dtype == torch.float32
            assert_within_torch_error(f"nf4_linear {isa} M={m} N={n} K={k} fused<={fused_max_m}", y, peer, ref64)


def test_linear_batch_dims_threads_and_blocksize():
    q = quantize_nf4(_weight((65, 256), seed=1), blocksize=128)
    x = torch.randn(2, 3, 256)
    y1 = native.nf4_linear(x, q)
    w = dequantize_nf4_ref(q, torch.float32)
    assert y1.shape == (2, 3, 65)
    assert_within_torch_error("nf4_linear (2, 3, K) blocksize 128", y1, x @ w.T, x.double() @ w.double().T)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # rows are split between threads; each output is computed the same way
        assert torch.equal(native.nf4_linear(x, q), y1)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("shape,blocksize", [((37, 70), 64), ((101, 129), 64), ((129, 640), 32), ((7,), 64)])
def test_dequantize_bit_exact(shape, blocksize):
    w = _weight(shape, seed=sum(shape)) * 40
    packed, qs = bnbf.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=True)
    q = NF4Weight.from_bnb(packed, qs)
    for dtype in DTYPES:
        qs.dtype = dtype
        with torch._dynamo.config.patch(disable=True):  # bitsandbytes compiles its generic path; eager is the same
            theirs = bnbf.dequantize_4bit(packed, qs).view(torch.uint8)
        ref = dequantize_nf4_ref(q, dtype).view(torch.uint8)
        for isa in ISAS:
            ours = native.nf4_dequantize(q, dtype, isa=isa).view(torch.uint8)
            assert torch.equal(ours, ref) and torch.equal(ours, theirs), (isa, shape, dtype)


@pytest.mark.parametrize("isa", ISAS)
def test_dequantize_without_double_quantization(isa):
    w = _weight((33, 128), seed=4, dtype=torch.float16)
    packed, qs = bnbf.quantize_4bit(w, quant_type="nf4", compress_statistics=False)
    q = NF4Weight.from_bnb(packed, qs)
    with torch._dynamo.config.patch(disable=True):
        theirs = bnbf.dequantize_4bit(packed, qs)
    assert torch.equal(native.nf4_dequantize(q, isa=isa).view(torch.uint8), theirs.view(torch.uint8))
    x = torch.randn(3, 128)
    w32 = dequantize_nf4_ref(q, torch.float32)
    assert_within_torch_error("nf4_linear fp32 absmax", native.nf4_linear(x, q, isa=isa), x @ w32.T,
                              x.double() @ w32.double().T)


def test_bad_input_names_op_and_layout():
    q = quantize_nf4(_weight((16, 128), seed=5))
    x = torch.randn(2, 128)
    short = NF4Weight(**{**q.__dict__, "packed": q.packed[:-1]})  # a truncated codes tensor
    with pytest.raises(RuntimeError, match=r"coalm::nf4_linear: packed .* expected Byte with 1024 .*layout"):
        native.nf4_linear(x, short)
    with pytest.raises(RuntimeError, match=r"coalm::nf4_dequantize: packed .*bitsandbytes NF4"):
        native.nf4_dequantize(short)
    with pytest.raises(RuntimeError, match=r"coalm::nf4_linear: x must be a float32"):
        native.nf4_linear(x.double(), q)
    with pytest.raises(RuntimeError, match=r"coalm::nf4_linear: x has shape .* K=128"):
        native.nf4_linear(torch.randn(2, 64), q)
    with pytest.raises(RuntimeError, match=r"coalm::nf4_linear: absmax is Float .* expected Byte"):
        native.nf4_linear(x, NF4Weight(**{**q.__dict__, "absmax": q.absmax.float()}))
    with pytest.raises(RuntimeError, match=r"coalm::nf4_dequantize: blocksize 48"):
        native.nf4_dequantize(NF4Weight(**{**q.__dict__, "blocksize": 48}))
    with pytest.raises(RuntimeError, match=r"coalm::nf4_dequantize: dtype"):
        native.nf4_dequantize(q, torch.int32)
    with pytest.raises(RuntimeError, match=r"unknown ISA 'sse9'"):
        native.nf4_linear(x, q, isa="sse9")


def test_forced_isa_from_env(monkeypatch):
    monkeypatch.setenv("COALM_NATIVE_ISA", "scalar")
    assert native.isa() == "scalar"
    if native.isa("auto") != LEVELS[-1] and ISAS[-1] != "avx512":  # a CPU below AVX-512 refuses it, naming its best
        with pytest.raises(RuntimeError, match="supports at most"):
            native.isa("avx512")


def test_meta_shapes():
    q = quantize_nf4(_weight((24, 128), seed=6))
    meta = NF4Weight(**{k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in q.__dict__.items()})
    y = native.nf4_linear(torch.empty(5, 7, 128, device="meta"), meta)
    assert y.shape == (5, 7, 24) and y.device.type == "meta"
    d = native.nf4_dequantize(meta, torch.bfloat16)
    assert d.shape == (24, 128) and d.dtype == torch.bfloat16 and d.device.type == "meta"


def test_missing_build_names_the_build_step(monkeypatch):
    monkeypatch.setattr(native, "_ops", None)
    monkeypatch.setitem(sys.modules, "coalm_kernels._C", None)  # what an unbuilt checkout looks like to `import`
    with pytest.raises(native.NativeOpsMissing, match=r"pip install -e \."):
        native.nf4_linear(torch.randn(1, 64), quantize_nf4(torch.randn(4, 64)))
    assert not native.available()
