"""Fused (Q)LoRA linear against an fp64 reference: forward and the gradients of x, lora_a and lora_b.

Bound: our error is at most 2x the error of PyTorch computing the same layer in the same precision (plus a
sixteenth of the dtype's epsilon times the largest reference value, so that a torch result that happens to be
exact does not demand an exact kernel). The NF4 reference uses the weight bitsandbytes-exactly dequantized (tests/kernels/test_nf4.py), so
both sides see the same W. On CPU the kernels run in Triton's interpreter (fp16/fp32); bf16 runs on a GPU.
"""

import random

import pytest
import torch

from coalm_kernels.lora_matmul import lora_linear, lora_linear_ref
from coalm_kernels.nf4 import dequantize_nf4_ref, quantize_nf4

# (leading dims of x, K, N, rank, dtype, NF4?): M = 1, 37, 513; K and N off the 32/64 tile sizes; K % 64 == 0
# takes the NF4 kernel's row-aligned path, other K its general path.
CASES = [
    ((1,), 96, 40, 8, torch.float16, True),
    ((37,), 128, 70, 16, torch.float16, True),
    ((2, 19), 130, 48, 64, torch.float32, False),
    ((513,), 192, 72, 16, torch.float32, True),
    ((513,), 100, 65, 8, torch.float16, False),
    ((3, 5, 7), 64, 33, 64, torch.float32, True),
    ((37,), 200, 130, 16, torch.float16, True),
]
GPU_CASES = [
    ((4, 1024), 4096, 1024, 16, torch.bfloat16, True),
    ((513,), 1000, 777, 64, torch.bfloat16, True),
    ((37,), 320, 130, 8, torch.bfloat16, False),
    ((1,), 256, 512, 16, torch.float16, True),
    ((200,), 384, 200, 16, torch.float32, True),
]
SCALE = 2.0  # lora_alpha / r as PEFT would set it


def _inputs(lead, K, N, r, dtype, nf4, device, seed, blocksize=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, K, generator=g).to(device, dtype)
    w = (torch.randn(N, K, generator=g) / K**0.5).to(device, dtype)
    a = (torch.randn(r, K, generator=g) / K**0.5).to(device, dtype)
    b = (torch.randn(N, r, generator=g) / r**0.5).to(device, dtype)
    dy = torch.randn(*lead, N, generator=g).to(device, dtype)
    return x, (quantize_nf4(w, blocksize) if nf4 else w), a, b, dy


def _forward_backward(fn, x, w, a, b, dy):
    x, a, b = (t.detach().clone().requires_grad_() for t in (x, a, b))
    y = fn(x, w, a, b, SCALE)
    return [y.detach(), *torch.autograd.grad(y, (x, a, b), dy)]


def _reference64(x, w, a, b, dy):
    dense = dequantize_nf4_ref(w, torch.float32) if not isinstance(w, torch.Tensor) else w
    x, a, b = (t.detach().double().requires_grad_() for t in (x, a, b))
    y = x @ dense.double().T + SCALE * (x @ a.T) @ b.T
    return [y.detach(), *torch.autograd.grad(y, (x, a, b), dy.double())]


def _check(lead, K, N, r, dtype, nf4, device, seed, blocksize=64):
    x, w, a, b, dy = _inputs(lead, K, N, r, dtype, nf4, device, seed, blocksize)
    ours = _forward_backward(lora_linear, x, w, a, b, dy)
    torch_same = _forward_backward(lora_linear_ref, x, w, a, b, dy)  # dequantize + torch matmuls in `dtype`
    ref = _reference64(x, w, a, b, dy)
    for name, o, t, r64 in zip(("y", "grad_x", "grad_a", "grad_b"), ours, torch_same, ref):
        assert o.shape == r64.shape and o.dtype == dtype, name
        err = (o.double() - r64).abs().max().item()
        torch_err = (t.double() - r64).abs().max().item()
        tiny = torch.finfo(dtype).eps / 16 * r64.abs().max().item()
        assert err <= 2 * torch_err + tiny, f"{name}: error {err:.3g} vs torch {torch_err:.3g}"


@pytest.mark.parametrize("lead,K,N,r,dtype,nf4", CASES)
def test_against_fp64(lead, K, N, r, dtype, nf4):
    _check(lead, K, N, r, dtype, nf4, "cpu", seed=K * N + r)


@pytest.mark.parametrize("blocksize", [32, 128])
def test_other_nf4_blocksizes(blocksize):
    # 32: two quantization blocks per 64-wide tile row (tiled path); 128: larger than the tile (element-wise path)
    _check((37,), 256, 48, 8, torch.float16, True, "cpu", seed=blocksize, blocksize=blocksize)


@pytest.mark.gpu
@pytest.mark.parametrize("lead,K,N,r,dtype,nf4", GPU_CASES)
def test_against_fp64_cuda(lead, K, N, r, dtype, nf4):
    _check(lead, K, N, r, dtype, nf4, "cuda", seed=K + N + r)


def test_weight_gets_no_gradient():
    x, w, a, b, dy = _inputs((5,), 64, 48, 8, torch.float32, False, "cpu", seed=0)
    w.requires_grad_()
    x.requires_grad_()
    (lora_linear(x, w, a, b, SCALE) * dy).sum().backward()
    assert w.grad is None and x.grad is not None


@pytest.mark.parametrize("lead, k, n, r", [((2, 9), 128, 40, 8), ((1, 1333), 96, 257, 16), ((7,), 33, 5, 3)])
def test_cpu_default_path_against_fp64(monkeypatch, lead, k, n, r):
    """Without the interpreter, one-dtype CPU tensors take the fused addmm path (what the engine trains with on a CPU):
    output and all three gradients as close to fp64 as the plain-torch reference in the same dtype, or closer."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, w, a, b, dy = _inputs(lead, k, n, r, torch.float32, False, "cpu", seed=random.randrange(2**31))
    got = _forward_backward(lora_linear, x, w, a, b, dy)
    same = _forward_backward(lora_linear_ref, x, w, a, b, dy)
    ref = _reference64(x, w, a, b, dy)
    for name, o, t, r64 in zip(("y", "grad_x", "grad_a", "grad_b"), got, same, ref):
        assert o.shape == r64.shape and o.dtype == torch.float32, name
        err, ref_err = ((v.double() - r64).abs().max().item() for v in (o, t))
        assert err <= 2 * ref_err + torch.finfo(torch.float32).eps / 16 * r64.abs().max().item(), (name, err, ref_err)


@pytest.mark.parametrize("nf4", [False, True])
def test_fp32_factors_under_bf16(nf4):
    """CPU mixed precision (`engine.train --dtype bf16` on a CPU): bf16 x and base weight, fp32 LoRA factors. The
    output and grad_x come back in bf16, the factors' gradients in fp32, each no less accurate than the same layer
    computed all in bf16 (against fp64 on the same bf16 inputs)."""
    x, w, a, b, dy = _inputs((3, 37), 130, 70, 16, torch.float32, nf4, "cpu", seed=11)
    xb, dyb, wb = x.bfloat16(), dy.bfloat16(), (w if nf4 else w.bfloat16())
    mixed = _forward_backward(lora_linear, xb, wb, a, b, dyb)
    all_bf16 = _forward_backward(lora_linear_ref, xb, wb, a.bfloat16(), b.bfloat16(), dyb)
    ref = _reference64(xb, wb if nf4 else wb.float(), a, b, dyb)
    for name, o, t, r64, dtype in zip(("y", "grad_x", "grad_a", "grad_b"), mixed, all_bf16, ref,
                                      (torch.bfloat16, torch.bfloat16, torch.float32, torch.float32)):
        assert o.shape == r64.shape and o.dtype == dtype, name
        err, bf16_err = ((v.double() - r64).abs().max().item() for v in (o, t))
        assert err <= 2 * bf16_err + torch.finfo(torch.bfloat16).eps / 16 * r64.abs().max().item(), (name, err, bf16_err)
    with pytest.raises(ValueError, match="not both float32"):
        lora_linear(xb, wb, a, b.bfloat16(), SCALE)


def test_bad_input():
    x, w, a, b, _ = _inputs((3,), 64, 32, 8, torch.float32, False, "cpu", seed=2)
    with pytest.raises(ValueError, match="shapes"):
        lora_linear(x, w, a, b.T.contiguous(), SCALE)
    with pytest.raises(ValueError, match="dtype"):
        lora_linear(x, w.half(), a, b, SCALE)
    with pytest.raises(TypeError, match="NF4Weight"):
        lora_linear(x, w.numpy(), a, b, SCALE)


def test_ref_nf4_path_equals_autograd_through_the_dequantized_weight():
    """The CPU QLoRA path re-dequantizes W in backward instead of keeping it: same numbers as plain autograd."""
    from coalm_kernels.nf4 import dequantize_nf4_ref, quantize_nf4

    g = torch.Generator().manual_seed(5)
    q = quantize_nf4(torch.randn(67, 130, generator=g))
    x = torch.randn(2, 19, 130, generator=g, requires_grad=True)
    a = torch.randn(8, 130, generator=g, requires_grad=True)
    b = torch.randn(67, 8, generator=g, requires_grad=True)
    dy = torch.randn(2, 19, 67, generator=g)
    got = lora_linear_ref(x, q, a, b, 0.5)
    grads = torch.autograd.grad(got, (x, a, b), dy)
    w = dequantize_nf4_ref(q, torch.float32)
    want = torch.add(torch.nn.functional.linear(x, w), torch.nn.functional.linear(torch.nn.functional.linear(x, a), b),
                     alpha=0.5)
    for gg, ww in zip(grads, torch.autograd.grad(want, (x, a, b), dy)):
        assert torch.equal(gg, ww)
    assert torch.equal(got, want)


@pytest.mark.parametrize("K", [192, 256])
def test_fp32_nf4_with_tf32_runs_the_transposed_grad_x(K):
    """fp32 operands with TF32 allowed and an NF4 weight launch grad-x as dx^T = W^T @ dy^T (W_FIRST, the variant
    sm_90 compiles; coalm_kernels/aot.py). The interpreter computes products in fp32, so this checks the
    transposed data flow against fp64 with the same bound as every other case. K=256 with blocksize 128 also
    takes the aligned tile path with one quantization block wider than the tile."""
    from coalm_kernels.lora_matmul import launch_plan

    assert launch_plan("dx", 37, 72, K, 16, torch.float32, (64, True), True, None).constexprs["W_FIRST"]
    before = torch.backends.cuda.matmul.allow_tf32  # a property of torch's cuBLAS module (monkeypatch cannot undo it)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        _check((37,), K, 72, 16, torch.float32, True, "cpu", seed=K, blocksize=64 if K == 192 else 128)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
