"""SwiGLU gate of the Llama MLP: y = silu(gate) * up, silu(g) = g * sigmoid(g).

Math (s = sigmoid(g)):
    forward   y      = g * s * u
    backward  d_up   = dy * g * s
              d_gate = dy * u * s * (1 + g * (1 - s))
Layout and limits: gate and up have the same shape and dtype (any shape; treated as flat, copied if not
contiguous). Arithmetic in fp32 with one rounding to the input dtype (torch eager rounds silu(g) and the
product separately). Inputs are saved for backward and nothing is recomputed but the sigmoid.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from coalm_kernels._dispatch import use_triton
from coalm_kernels.plan import Config, Launch, arch_of, family, need, run

BLOCK = 1024


@triton.jit
def _swiglu_fwd_kernel(g_ptr, u_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, (g * tl.sigmoid(g) * u).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(dy_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    tl.store(du_ptr + offs, (dy * g * s).to(du_ptr.dtype.element_ty), mask=mask)
    tl.store(dg_ptr + offs, (dy * u * s * (1.0 + g * (1.0 - s))).to(dg_ptr.dtype.element_ty), mask=mask)


def launch_plan(op: str, n: int, dtype: torch.dtype, arch: int | None) -> Launch:
    """The forward (op "fwd") or backward (op "bwd") launch over n elements of a float dtype."""
    name = f"swiglu.{op}"
    need(op in ("fwd", "bwd"), name, f"op {op!r} must be 'fwd' or 'bwd'")
    need(dtype.is_floating_point, name, f"dtype {dtype} is not a float type")
    need(n >= 1, name, f"n={n} < 1")
    family(arch, name)
    args = (dtype,) * (3 if op == "fwd" else 5) + (n,)
    return Launch(name, _swiglu_fwd_kernel if op == "fwd" else _swiglu_bwd_kernel, args, {"BLOCK": BLOCK},
                  (Config.of(4, 3),))


def _swiglu_fwd(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    y = torch.empty_like(gate)
    n = gate.numel()
    run(launch_plan("fwd", n, gate.dtype, arch_of(gate)), (triton.cdiv(n, BLOCK),), gate, up, y, n)
    return y


def _swiglu_bwd(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor):
    dg, du = torch.empty_like(gate), torch.empty_like(up)
    n = gate.numel()
    run(launch_plan("bwd", n, gate.dtype, arch_of(gate)), (triton.cdiv(n, BLOCK),), dy, gate, up, dg, du, n)
    return dg, du


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        gate, up = gate.contiguous(), up.contiguous()
        ctx.save_for_backward(gate, up)
        return _swiglu_fwd(gate, up)

    @staticmethod
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors
        return _swiglu_bwd(dy.contiguous(), gate, up)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, differentiable in both."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"swiglu: gate and up must match in shape and dtype, got {tuple(gate.shape)} {gate.dtype} "
                         f"and {tuple(up.shape)} {up.dtype}")
    if use_triton(gate) and gate.numel() > 0:
        return _SwiGLU.apply(gate, up)
    return swiglu_ref(gate, up)


class _SwiGLURef(torch.autograd.Function):
    """Plain-torch silu(gate) * up keeping only gate and up for backward (autograd through the expression would
    also keep silu(gate), one more (tokens x ffn) tensor per layer in CPU training)."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors
        dgate = torch.ops.aten.silu_backward(dy * up, gate)  # torch's own fused d silu / d gate
        return dgate, dy * F.silu(gate)


def swiglu_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Plain torch (the CPU path)."""
    return _SwiGLURef.apply(gate, up)
