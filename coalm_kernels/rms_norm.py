"""RMSNorm: y = cast(x / sqrt(mean(x^2) + eps), x.dtype) * weight  (Llama / HF `LlamaRMSNorm` semantics).

Math (per row x of length N, s = sqrt(mean(x^2) + eps), xhat = x / s):
    forward   y   = round_to_x_dtype(xhat) * w          # normalise in fp32, cast, then scale, as HF does
    backward  dw  = sum_rows(dy * xhat)
              dx  = (dy * w - xhat * mean(dy * w * xhat)) / s
The rounding of xhat to x.dtype is treated as identity in the backward pass (straight-through), which is what
autograd through the HF module computes as well.

Layout and limits:
  x (..., N) with any leading dims, last dim contiguous (copied otherwise); weight (N,). The output dtype is
  torch's promotion of (x.dtype, weight.dtype), exactly as `weight * x_hat.to(x.dtype)` in HF.
  One program per row holds the whole row in registers: N <= 65536 (wider rows raise on a GPU, run the torch
  path under the interpreter).
  Arithmetic is fp32, except the two row sums (sum x^2, sum dy*w*xhat) which accumulate in fp64; s is kept
  per row (fp32) for the backward pass. Backward: each program walks a contiguous slab of rows and
  accumulates its partial dw in fp32; the partials (programs x N, fp32) are summed on the host.
"""

import torch
import triton
import triton.language as tl

from coalm_kernels._dispatch import use_triton
from coalm_kernels.plan import Config, Launch, arch_of, family, need, run

MAX_N = 65536


@triton.jit
def _rms_norm_fwd_kernel(x_ptr, w_ptr, y_ptr, std_ptr, stride_x, stride_y, N, eps, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    # The row statistic is summed in fp64 (N flops a row, free in a memory-bound kernel) and applied as x / std
    # with IEEE-rounded sqrt and division, not the approximate PTX forms: the fp32 output is then as accurate
    # as torch's own (whose CPU sum is a cascade sum, more accurate than a plain fp32 tree).
    x64 = x.to(tl.float64)
    std = tl.sqrt_rn((tl.sum(x64 * x64, axis=0) / N + eps).to(tl.float32))
    # HF rounds the normalised row to the input dtype before the weight multiply; do the same so that the
    # kernel and the reference agree bit for bit in the common same-dtype case.
    xhat = tl.div_rn(x, std).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_y + cols, (xhat * w).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(std_ptr + row, std)


@triton.jit
def _rms_norm_bwd_kernel(dy_ptr, x_ptr, w_ptr, std_ptr, dx_ptr, dw_ptr, stride_dy, stride_x, stride_dx,
                         M, N, rows_per_program, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    # walk the slab by advancing 64-bit row pointers
    x_row = x_ptr + row_start * stride_x
    dy_row = dy_ptr + row_start * stride_dy
    dx_row = dx_ptr + row_start * stride_dx
    for row in range(row_start, row_end):
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(tl.float32)
        std = tl.load(std_ptr + row)
        xhat = tl.div_rn(x, std)
        wdy = w * dy
        c = (tl.sum(xhat.to(tl.float64) * wdy, axis=0) / N).to(tl.float32)
        tl.store(dx_row + cols, tl.div_rn(wdy - xhat * c, std).to(dx_ptr.dtype.element_ty), mask=mask)
        dw += dy * xhat
        x_row += stride_x
        dy_row += stride_dy
        dx_row += stride_dx
    tl.store(dw_ptr + pid * N + cols, dw, mask=mask)


def _as_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    t2 = t.reshape(-1, n)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _num_warps(block_n: int) -> int:
    return 4 if block_n <= 2048 else (8 if block_n <= 8192 else 16)


def launch_plan(op: str, M: int, N: int, x_dtype: torch.dtype, w_dtype: torch.dtype, arch: int | None,
                programs: int = 1) -> Launch:
    """The forward (op "fwd", one program per row) or backward (op "bwd", `programs` slabs of rows) launch for
    x (M, N) contiguous rows; the output dtype is torch's promotion of x's and weight's."""
    name = f"rms_norm.{op}"
    need(op in ("fwd", "bwd"), name, f"op {op!r} must be 'fwd' or 'bwd'")
    need(1 <= N <= MAX_N and M >= 1, name, f"N={N} outside [1, {MAX_N}] (one row per program) or M={M} < 1")
    need(x_dtype.is_floating_point and w_dtype.is_floating_point, name, f"dtypes {x_dtype}, {w_dtype} not float")
    family(arch, name)
    block = triton.next_power_of_2(N)
    f32, y = torch.float32, torch.promote_types(x_dtype, w_dtype)
    if op == "fwd":
        args = (x_dtype, w_dtype, y, f32, N, N, N, 1e-5)
        kernel = _rms_norm_fwd_kernel
    else:
        args = (x_dtype, x_dtype, w_dtype, f32, x_dtype, f32, N, N, N, M, N, triton.cdiv(M, programs))
        kernel = _rms_norm_bwd_kernel
    return Launch(name, kernel, args, {"BLOCK_N": block}, (Config.of(_num_warps(block), 3),))


def _rms_norm_fwd(x2: torch.Tensor, weight: torch.Tensor, eps: float):
    M, N = x2.shape
    y = torch.empty((M, N), dtype=torch.promote_types(x2.dtype, weight.dtype), device=x2.device)
    std = torch.empty(M, dtype=torch.float32, device=x2.device)
    run(launch_plan("fwd", M, N, x2.dtype, weight.dtype, arch_of(x2)), (M,), x2, weight, y, std, x2.stride(0),
        y.stride(0), N, eps)
    return y, std


def _rms_norm_bwd(dy2: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, std: torch.Tensor):
    M, N = x2.shape
    dx = torch.empty_like(x2)
    if x2.is_cuda:
        programs = min(M, 4 * torch.cuda.get_device_properties(x2.device).multi_processor_count)
    else:  # the interpreter runs programs one after another; fewer, longer programs cost the same
        programs = min(M, 16)
    rows_per_program = triton.cdiv(M, programs)
    programs = triton.cdiv(M, rows_per_program)
    dw_partial = torch.empty((programs, N), dtype=torch.float32, device=x2.device)
    plan = launch_plan("bwd", M, N, x2.dtype, weight.dtype, arch_of(x2), programs)
    run(plan, (programs,), dy2, x2, weight, std, dx, dw_partial, dy2.stride(0), x2.stride(0), dx.stride(0), M, N,
        rows_per_program)
    return dx, dw_partial.sum(0).to(weight.dtype)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        x2 = _as_rows(x, x.shape[-1])
        y, std = _rms_norm_fwd(x2, weight, eps)
        ctx.save_for_backward(x2, weight, std)
        return y.view(*x.shape[:-1], x.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, weight, std = ctx.saved_tensors
        dx, dw = _rms_norm_bwd(_as_rows(dy, x2.shape[1]), x2, weight, std)
        return dx.view(dy.shape), (dw if ctx.needs_input_grad[1] else None), None


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"rms_norm: weight must have shape ({x.shape[-1]},) to match x's last dim, "
                         f"got {tuple(weight.shape)}")
    if not (x.is_floating_point() and weight.is_floating_point()):
        raise TypeError(f"rms_norm: x and weight must be floating point, got {x.dtype} and {weight.dtype}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalise the last dim of `x` and scale by `weight` (differentiable in x and weight)."""
    _check(x, weight)
    if use_triton(x) and x.numel() > 0 and (x.is_cuda or x.shape[-1] <= MAX_N):  # a GPU never falls back
        return _RMSNorm.apply(x, weight, float(eps))
    return rms_norm_ref(x, weight, eps)


class _RMSNormRef(torch.autograd.Function):
    """Plain-torch RMSNorm that keeps only x and the per-row rstd for backward (autograd through the expression
    would also keep the fp32 copy and the normalised rows: ~2x the activation memory of CPU training)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        n = x.float() * rstd  # the normalised rows, recomputed
        dw = None
        if ctx.needs_input_grad[1]:
            dw = (dy * n.to(x.dtype)).reshape(-1, x.shape[-1]).float().sum(0).to(weight.dtype)
        dn = (dy * weight).float()
        dx = rstd * (dn - n * (dn * n).mean(-1, keepdim=True))
        return dx.to(x.dtype), dw, None


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Plain torch, the same numerics as HF's LlamaRMSNorm (the CPU path): normalise in fp32, cast, scale."""
    return _RMSNormRef.apply(x, weight, float(eps))
