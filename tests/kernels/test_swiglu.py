"""SwiGLU kernel (Triton, interpreted on CPU) and its torch reference against fp64.

Forward and both gradients within 2x the error of PyTorch eager (`F.silu(gate) * up` in the same dtype),
PyTorch's error counted as at least half an ulp of the largest output.
"""

import pytest
import torch
import torch.nn.functional as F

from coalm_kernels.swiglu import swiglu, swiglu_ref
from tests.kernels.error_bound import assert_within_torch_error

DTYPES = [
    (torch.float32, "cpu"),
    (torch.float16, "cpu"),
    pytest.param(torch.bfloat16, "cuda", marks=pytest.mark.gpu),
]
SHAPES = [(1, 576), (37, 100), (2, 513, 100), (3, 1537)]
IMPLS = {"triton": swiglu, "ref": swiglu_ref}


def _run(fn, gate, up, dy):
    gate, up = gate.detach().clone().requires_grad_(), up.detach().clone().requires_grad_()
    y = fn(gate, up)
    y.backward(dy.to(y.dtype))
    return y, gate.grad, up.grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype,device", DTYPES)
def test_swiglu_matches_fp64_within_torch_error(impl, shape, dtype, device):
    g = torch.Generator().manual_seed(sum(shape))
    gate, up, dy = (torch.randn(shape, generator=g).mul(4).to(device=device, dtype=dtype) for _ in range(3))
    ours = _run(IMPLS[impl], gate, up, dy)
    peer = _run(lambda a, b: F.silu(a) * b, gate, up, dy)
    ref = _run(lambda a, b: F.silu(a.double()) * b.double(), gate, up, dy)
    assert ours[0].dtype == dtype and ours[0].shape == gate.shape
    for name, o, p, r in zip(("y", "d_gate", "d_up"), ours, peer, ref):
        assert_within_torch_error(name, o, p, r)


def test_swiglu_non_contiguous_inputs():
    gate_up = torch.randn(5, 2, 100)  # gate and up interleaved, as from one fused projection
    torch.testing.assert_close(swiglu(gate_up[:, 0], gate_up[:, 1]), swiglu_ref(gate_up[:, 0], gate_up[:, 1]))


def test_swiglu_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="must match"):
        swiglu(torch.randn(3, 4), torch.randn(3, 5))
