"""NF4 against bitsandbytes: equal codes and statistics from quantization, and bit-exact dequantization in
both directions (their weight through our Triton kernel and reference, ours through their dequantizer).

Runs the Triton kernel in the interpreter on CPU (tests/conftest.py); the `gpu` tests compare with
bitsandbytes' CUDA kernels.
"""

import pytest
import torch

from coalm_kernels.nf4 import NF4_CODE, NF4Weight, dequantize_nf4, dequantize_nf4_ref, dynamic_map, quantize_nf4

bnbf = pytest.importorskip("bitsandbytes.functional")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (shape, dtype, blocksize): odd numels, partial last 64-block, block counts below / above / not a multiple of 256.
CASES = [
    ((37, 70), torch.float32, 64),
    ((300, 129), torch.bfloat16, 64),
    ((7,), torch.float32, 64),
    ((129, 640), torch.float16, 64),
    ((65, 96), torch.float32, 32),
    ((50, 256), torch.bfloat16, 128),
]


@pytest.fixture(autouse=True)
def _eager_bnb():
    # bitsandbytes torch.compiles its generic dequantizer (odd shapes); eager gives the same numbers, much faster.
    with torch._dynamo.config.patch(disable=True):
        yield


def _weight(shape, dtype, seed, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * scale
    w.view(-1)[: min(w.numel(), 64)] = 0  # one all-zero block (absmax 0)
    w.view(-1)[-1] = 3.0  # an outlier: one absmax far above the rest
    return w.to(dtype)


def _bits(t):
    return t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int16)


def _assert_same_bits(ours, theirs):
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    diff = (_bits(ours) != _bits(theirs)).sum().item()
    assert diff == 0, f"{diff} of {ours.numel()} values differ, max |diff| {(ours.float() - theirs.float()).abs().max()}"


def test_tables_match_bitsandbytes():
    assert torch.equal(torch.tensor(NF4_CODE), bnbf.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(dynamic_map(), bnbf.create_dynamic_map())


@pytest.mark.parametrize("shape,dtype,blocksize", CASES)
def test_quantize_matches_bitsandbytes(shape, dtype, blocksize):
    w = _weight(shape, dtype, seed=1)
    packed, qs = bnbf.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=True)
    q = quantize_nf4(w, blocksize=blocksize)
    assert torch.equal(q.packed, packed.view(-1))
    assert torch.equal(q.absmax, qs.absmax)
    assert torch.equal(q.absmax2, qs.state2.absmax)
    assert torch.equal(q.offset, qs.offset)
    assert torch.equal(q.code2, qs.state2.code)
    assert (q.shape, q.dtype, q.blocksize) == (qs.shape, qs.dtype, qs.blocksize)


@pytest.mark.parametrize("shape,dtype,blocksize", CASES)
def test_their_weight_dequantizes_bit_exactly(shape, dtype, blocksize):
    w = _weight(shape, dtype, seed=2, scale=1.0)
    packed, qs = bnbf.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=True)
    q = NF4Weight.from_bnb(packed, qs)
    for out_dtype in DTYPES:
        qs.dtype = out_dtype  # bitsandbytes dequantizes to the dtype recorded in its state
        theirs = bnbf.dequantize_4bit(packed, qs)
        _assert_same_bits(dequantize_nf4(q, out_dtype), theirs)
        _assert_same_bits(dequantize_nf4_ref(q, out_dtype), theirs)
    assert dequantize_nf4(q).dtype == dtype


@pytest.mark.parametrize("shape,dtype,blocksize", CASES[:4])
def test_our_weight_dequantizes_bit_exactly_in_bitsandbytes(shape, dtype, blocksize):
    q = quantize_nf4(_weight(shape, dtype, seed=3), blocksize=blocksize)
    packed, qs = q.to_bnb()
    for out_dtype in DTYPES:
        qs.dtype = out_dtype
        _assert_same_bits(bnbf.dequantize_4bit(packed, qs), dequantize_nf4(q, out_dtype))


def test_without_double_quantization():
    w = _weight((33, 128), torch.float16, seed=4)
    packed, qs = bnbf.quantize_4bit(w, quant_type="nf4", compress_statistics=False)
    q = NF4Weight.from_bnb(packed, qs)
    assert not q.double_quant
    _assert_same_bits(dequantize_nf4(q), bnbf.dequantize_4bit(packed, qs))
    _assert_same_bits(dequantize_nf4_ref(q), bnbf.dequantize_4bit(packed, qs))


def test_to_device_and_bad_input():
    q = quantize_nf4(_weight((16, 64), torch.float32, seed=5))
    moved = q.to("cpu")
    assert moved is not q and torch.equal(moved.packed, q.packed) and moved.shape == q.shape
    with pytest.raises(ValueError, match="blocksize"):
        quantize_nf4(torch.zeros(64), blocksize=48)
    with pytest.raises(ValueError, match="dtype"):
        quantize_nf4(torch.zeros(64, dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype"):
        dequantize_nf4(q, torch.int8)
    with pytest.raises(ValueError, match="nf4"):
        NF4Weight.from_bnb(*bnbf.quantize_4bit(torch.zeros(64), quant_type="fp4"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_against_bitsandbytes_cuda(dtype):
    w = _weight((1031, 777), dtype, seed=6).cuda()
    packed, qs = bnbf.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
    _assert_same_bits(dequantize_nf4(NF4Weight.from_bnb(packed, qs)), bnbf.dequantize_4bit(packed, qs))
    q = quantize_nf4(w)
    assert torch.equal(q.to("cpu").packed, quantize_nf4(w.cpu()).packed)  # our 4-bit codes: device-independent
    ours_packed, ours_qs = q.to_bnb()
    _assert_same_bits(bnbf.dequantize_4bit(ours_packed, ours_qs), dequantize_nf4(q))
