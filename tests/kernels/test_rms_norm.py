"""RMSNorm kernel (Triton, interpreted on CPU) and its torch reference against an fp64 reference.

The rule: forward and every gradient within 2x the error of PyTorch itself (HF's LlamaRMSNorm run in the
same dtype) against the fp64 result computed from the same inputs. PyTorch's error is counted as at least
half an ulp of the largest output (what rounding the exact result would cost): below that the ratio of two
maximum errors is noise.
"""

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from coalm_kernels.rms_norm import rms_norm, rms_norm_ref
from tests.kernels.error_bound import assert_within_torch_error

EPS = 1e-5
DTYPES = [
    (torch.float32, "cpu"),
    (torch.float16, "cpu"),
    pytest.param(torch.bfloat16, "cuda", marks=pytest.mark.gpu),
]
SHAPES = [(1, 576), (37, 100), (513, 576), (2, 19, 100)]
IMPLS = {"triton": rms_norm, "ref": rms_norm_ref}


def _fp64(x, w):
    x = x.double()
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w.double()


def _run(fn, x, w, dy):
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y = fn(x, w)
    y.backward(dy.to(y.dtype))
    return y, x.grad, w.grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype,device", DTYPES)
def test_rms_norm_matches_fp64_within_torch_error(impl, shape, dtype, device):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g) * 3 + 0.5).to(device=device, dtype=dtype)
    w = (torch.rand(shape[-1], generator=g) + 0.5).to(device=device, dtype=dtype)
    dy = torch.randn(shape, generator=g).to(device=device, dtype=dtype)

    ours = _run(lambda a, b: IMPLS[impl](a, b, EPS), x, w, dy)
    hf = LlamaRMSNorm(shape[-1], eps=EPS).to(device=device, dtype=dtype)

    peer = _run(lambda a, b: torch.func.functional_call(hf, {"weight": b}, (a,)), x, w, dy)
    ref = _run(_fp64, x, w, dy)
    assert ours[0].dtype == peer[0].dtype == dtype and ours[0].shape == x.shape
    for name, o, p, r in zip(("y", "dx", "dw"), ours, peer, ref):
        assert_within_torch_error(name, o, p, r)


def test_rms_norm_mixed_dtypes_follow_hf_promotion():
    x = torch.randn(5, 100, dtype=torch.float16)
    w = torch.rand(100) + 0.5  # fp32 weight, fp16 activations: HF returns fp32
    hf = LlamaRMSNorm(100, eps=EPS)
    hf.weight = torch.nn.Parameter(w.clone())
    y = rms_norm(x, w, EPS)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, hf(x), rtol=0, atol=0)


def test_rms_norm_strided_input():
    x = torch.randn(8, 200)[:, ::2]  # last dim not contiguous
    w = torch.rand(100) + 0.5
    torch.testing.assert_close(rms_norm(x, w, EPS), rms_norm_ref(x, w, EPS))


def test_rms_norm_rejects_mismatched_weight():
    with pytest.raises(ValueError, match="weight must have shape"):
        rms_norm(torch.randn(3, 100), torch.ones(99), EPS)
