"""Fused (Q)LoRA linear layer: y = x @ W^T + scale * (x @ A^T) @ B^T, with W frozen and dense or NF4.

Shapes: x (..., K); W (N, K), a Tensor in x's dtype or an `NF4Weight`; A (r, K); B (N, r); y (..., N).
x, A and B share one dtype (fp32, fp16 or bf16); products accumulate in fp32 and are rounded once at the end.

Forward: xa = x @ A^T (M x r, small, a torch matmul) first; then one Triton kernel over (M, N) tiles starts its
fp32 accumulator at scale * xa @ B^T and loops over K adding x @ W^T (one accumulator, not two, keeps register
pressure at that of a plain matmul). For an NF4 weight each W tile is
dequantized in registers inside that loop (`coalm_kernels.nf4._nf4_tile`): the full-precision W never exists
in memory, only its 4-bit codes and 8-bit absmaxes are read.
Backward: dyB = dy @ B (M x r, torch); grad_x = scale * dyB @ A + dy @ W is the same kind of kernel over (M, K)
tiles looping over N, again dequantizing W tiles in place; grad_A = scale * dyB^T @ x and
grad_B = scale * dy^T @ xa are small torch matmuls. W never gets a gradient.

Dispatch (`coalm_kernels._dispatch.use_triton`): CUDA tensors (and CPU tensors under TRITON_INTERPRET=1) run the
kernels; CPU tensors with an NF4 weight run the compiled ops (`coalm_kernels.native`: nf4_linear forward, nf4_dequantize
in backward); otherwise `lora_linear_ref` (dequantize, then three torch matmuls) runs. fp32 operands use TF32 in
the kernels only when torch.backends.cuda.matmul.allow_tf32 is set, as torch itself does.
NF4 tiles: with K % blocksize == 0 (every Llama shape) quantization blocks lie inside rows and a tile is
dequantized block by block (one absmax per min(blocksize, tile width) values, each byte read once); otherwise
value by value (the "gather" path, with more live registers: only for K % blocksize != 0).
Limits: any r (handled in chunks of at most 64); every dimension < 2**31, N * K < 2**36. `launch_plan` gives what
runs: on CUDA tiles autotuned per (M rounded up to a power of two, N, K, r) among the arch's 2 candidates for
that M range and operand dtype; under the interpreter one small config. Outside the plan: PlanError.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from coalm_kernels import native
from coalm_kernels._dispatch import HAS_TRITON, use_triton
from coalm_kernels.nf4 import NF4Weight, dequantize_nf4_ref, nf4_kernel_args
from coalm_kernels.plan import Config, Launch, PlanError, arch_of, family, need, run

if HAS_TRITON:
    import triton
    import triton.language as tl

    from coalm_kernels.nf4 import _nf4_tile

    @triton.jit
    def _w_tile(w_ptr, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, code_ptr, n0, k0, N, K, stride_wn,
                BN: tl.constexpr, BK: tl.constexpr, IS_NF4: tl.constexpr, BS: tl.constexpr, DOUBLE: tl.constexpr,
                K_DIV_BS: tl.constexpr, DTYPE: tl.constexpr):
        """W[n0:n0+BN, k0:k0+BK] in DTYPE, zero outside N x K."""
        if IS_NF4:
            w = _nf4_tile(n0, k0, N, K, w_ptr, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, code_ptr, BN, BK, BS,
                          256, DOUBLE, K_DIV_BS and (BK % BS == 0 or BS % BK == 0))
        else:
            ln = tl.arange(0, BN)
            lk = tl.arange(0, BK)
            origin = w_ptr + tl.cast(n0, tl.int64) * stride_wn + k0
            w = tl.load(origin + ln[:, None] * stride_wn + lk[None, :],
                        mask=(n0 + ln[:, None] < N) & (k0 + lk[None, :] < K), other=0.0)
        return w.to(DTYPE)

    @triton.jit
    def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        # Grouped order: GROUP_M row tiles share each column tile while it is hot in L2.
        pid = tl.program_id(0)
        n_m, n_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        group = pid // (GROUP_M * n_n)
        first_m = group * GROUP_M
        size_m = min(n_m - first_m, GROUP_M)
        return first_m + (pid % (GROUP_M * n_n)) % size_m, (pid % (GROUP_M * n_n)) // size_m

    @triton.jit
    def _low_rank(acc, u_ptr, v_ptr, m0, c0, M, C, R, stride_um, stride_v, V_ROWS_ARE_C: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr):
        """acc + U[m0:+BM, :] @ V^T (V (C, R) when V_ROWS_ARE_C, else V (R, C)) over R in BLOCK_R chunks."""
        lm = tl.arange(0, BLOCK_M)
        lc = tl.arange(0, BLOCK_C)
        lr = tl.arange(0, BLOCK_R)
        u_origin = u_ptr + tl.cast(m0, tl.int64) * stride_um
        for r0 in range(0, R, BLOCK_R):
            u = tl.load(u_origin + lm[:, None] * stride_um + r0 + lr[None, :],
                        mask=(m0 + lm[:, None] < M) & (r0 + lr[None, :] < R), other=0.0)
            if V_ROWS_ARE_C:  # V (C, R): load its (BLOCK_R, BLOCK_C) transpose
                v = tl.load(v_ptr + tl.cast(c0, tl.int64) * stride_v + r0 + lc[None, :] * stride_v + lr[:, None],
                            mask=(c0 + lc[None, :] < C) & (r0 + lr[:, None] < R), other=0.0)
            else:  # V (R, C)
                v = tl.load(v_ptr + c0 + (r0 + lr[:, None]) * stride_v + lc[None, :],
                            mask=(r0 + lr[:, None] < R) & (c0 + lc[None, :] < C), other=0.0)
            acc = tl.dot(u, v, acc, input_precision=PRECISION)
        return acc

    @triton.jit
    def _fwd_kernel(x_ptr, w_ptr, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, code_ptr, xa_ptr, b_ptr, y_ptr,
                    M, N, K, R, scale, stride_xm, stride_wn, stride_xam, stride_bn, stride_ym, M_BUCKET,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
                    GROUP_M: tl.constexpr, IS_NF4: tl.constexpr, BS: tl.constexpr, DOUBLE: tl.constexpr,
                    K_DIV_BS: tl.constexpr, PRECISION: tl.constexpr):
        """y tile = scale * xa @ B^T + x @ W^T; M_BUCKET only keys the autotuner."""
        pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
        m0, n0 = pid_m * BLOCK_M, pid_n * BLOCK_N
        lm, ln, lk = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_K)
        dtype = x_ptr.dtype.element_ty
        # The low-rank term first, so that a single fp32 accumulator serves both products.
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc = _low_rank(acc, xa_ptr, b_ptr, m0, n0, M, N, R, stride_xam, stride_bn, True, BLOCK_M, BLOCK_N, BLOCK_R,
                        PRECISION) * scale
        x_ptrs = x_ptr + tl.cast(m0, tl.int64) * stride_xm + lm[:, None] * stride_xm + lk[None, :]
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(x_ptrs, mask=(m0 + lm[:, None] < M) & (k0 + lk[None, :] < K), other=0.0)
            w = _w_tile(w_ptr, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, code_ptr, n0, k0, N, K, stride_wn,
                        BLOCK_N, BLOCK_K, IS_NF4, BS, DOUBLE, K_DIV_BS, dtype)
            acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
            x_ptrs += BLOCK_K
        y_ptrs = y_ptr + tl.cast(m0, tl.int64) * stride_ym + n0 + lm[:, None] * stride_ym + ln[None, :]
        tl.store(y_ptrs, acc.to(dtype), mask=(m0 + lm[:, None] < M) & (n0 + ln[None, :] < N))

    @triton.jit
    def _dx_kernel(dy_ptr, w_ptr, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, code_ptr, dyb_ptr, a_ptr, dx_ptr,
                   M, N, K, R, scale, stride_dym, stride_wn, stride_dybm, stride_ar, stride_dxm, M_BUCKET,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
                   GROUP_M: tl.constexpr, IS_NF4: tl.constexpr, BS: tl.constexpr, DOUBLE: tl.constexpr,
                   K_DIV_BS: tl.constexpr, PRECISION: tl.constexpr, W_FIRST: tl.constexpr):
        """dx tile = scale * dyB @ A + dy @ W, over (M, K) tiles, looping over N. W_FIRST computes the transpose,
        dx^T = W^T @ dy^T, so that the dequantized W tile is the register operand (see `launch_plan`)."""
        pid_m, pid_k = _tile_ids(M, K, BLOCK_M, BLOCK_K, GROUP_M)
        m0, k0 = pid_m * BLOCK_M, pid_k * BLOCK_K
        lm, ln, lk = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_K)
        dtype = dy_ptr.dtype.element_ty
        acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        acc = _low_rank(acc, dyb_ptr, a_ptr, m0, k0, M, K, R, stride_dybm, stride_ar, False, BLOCK_M, BLOCK_K, BLOCK_R,
                        PRECISION) * scale
        if W_FIRST:
            acc_t = tl.trans(acc)
        dy_ptrs = dy_ptr + tl.cast(m0, tl.int64) * stride_dym + lm[:, None] * stride_dym + ln[None, :]
        for n0 in range(0, N, BLOCK_N):
            dy = tl.load(dy_ptrs, mask=(m0 + lm[:, None] < M) & (n0 + ln[None, :] < N), other=0.0)
            w = _w_tile(w_ptr, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, code_ptr, n0, k0, N, K, stride_wn,
                        BLOCK_N, BLOCK_K, IS_NF4, BS, DOUBLE, K_DIV_BS, dtype)
            if W_FIRST:
                acc_t = tl.dot(tl.trans(w), tl.trans(dy), acc_t, input_precision=PRECISION)
            else:
                acc = tl.dot(dy, w, acc, input_precision=PRECISION)
            dy_ptrs += BLOCK_N
        if W_FIRST:
            acc = tl.trans(acc_t)
        dx_ptrs = dx_ptr + tl.cast(m0, tl.int64) * stride_dxm + k0 + lm[:, None] * stride_dxm + lk[None, :]
        tl.store(dx_ptrs, acc.to(dtype), mask=(m0 + lm[:, None] < M) & (k0 + lk[None, :] < K))

# Candidates (BLOCK_M, output-column block, looped block, warps, stages) per arch family, operand class and M range:
# one or two each, since every one costs a compile on the first call (sm_80 keeps one where the second spilled). Every one was compiled ahead of time for its arch
# (`python -m coalm_kernels.aot --full`, bench/aot_report.md): no compile failure, within the arch's shared
# memory, no register spill at bf16/fp16 (fp32: under 1 KB per thread), wgmma on sm_90 for BLOCK_M >= 64.
# Hopper: up to 128 x 256 tiles, 8 warps, 3 stages for big M (the dequantized W tile is shared by BLOCK_M rows);
# narrow M tiles and a long inner block when decoding. fp32 operands take half the tile area (twice the bytes),
# and the element-wise NF4 path ("gather", K % blocksize != 0 only) gathers every value: small tiles, 2 stages.
# fp32 without TF32 ("ieee") has no tensor-core path: tl.dot becomes FMA loops whose operands live in registers, and
# a K block over 16 spills kilobytes per thread.
_SHAPES = {
    (90, "half", "small"): [(32, 64, 64, 8, 3)],
    (90, "half", "mid"): [(64, 128, 64, 4, 4), (128, 128, 64, 8, 3)],
    (90, "half", "large"): [(128, 128, 64, 8, 3), (128, 256, 64, 8, 3)],
    (80, "half", "small"): [(16, 64, 128, 4, 3)],
    (80, "half", "mid"): [(64, 64, 64, 4, 3)],
    (80, "half", "large"): [(128, 128, 32, 8, 3)],
    (90, "fp32", "small"): [(16, 64, 64, 4, 3), (32, 64, 64, 4, 3)],
    (90, "fp32", "mid"): [(64, 64, 64, 4, 3), (64, 128, 32, 4, 3)],
    (90, "fp32", "large"): [(128, 128, 32, 8, 3), (64, 128, 32, 4, 3)],
    (80, "fp32", "small"): [(16, 64, 64, 4, 3), (32, 64, 64, 4, 3)],
    (80, "fp32", "mid"): [(64, 64, 64, 4, 3), (64, 128, 32, 4, 3)],
    (80, "fp32", "large"): [(128, 128, 32, 8, 3), (64, 128, 32, 4, 3)],
    (90, "ieee", "small"): [(32, 64, 16, 4, 3)],
    (90, "ieee", "mid"): [(32, 64, 16, 4, 3), (128, 64, 16, 8, 3)],
    (90, "ieee", "large"): [(128, 64, 16, 8, 3)],
    (80, "ieee", "small"): [(32, 64, 16, 4, 3)],
    (80, "ieee", "mid"): [(32, 64, 16, 4, 3), (128, 64, 16, 8, 3)],
    (80, "ieee", "large"): [(128, 64, 16, 8, 3)],
    (90, "gather", "small"): [(16, 32, 64, 4, 2)],
    (90, "gather", "mid"): [(64, 64, 64, 8, 2)],
    (90, "gather", "large"): [(64, 64, 64, 8, 2)],
    (80, "gather", "small"): [(16, 32, 64, 4, 2)],
    (80, "gather", "mid"): [(64, 64, 64, 8, 2)],
    (80, "gather", "large"): [(64, 64, 64, 8, 2)],
}
_INTERP = (32, 32, 64, 4, 1)  # BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, -: small, the interpreter is slow
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _candidates(fam, kind, m_range):
    """(BLOCK_M, output-column block, looped block, warps, stages) candidates for this arch family."""
    return _SHAPES[fam, kind, m_range]


def m_bucket(M: int) -> int:
    """The autotune key for M: a power of two in [16, 4096]."""
    return max(16, min(4096, triton.next_power_of_2(M)))


def launch_plan(op: str, M: int, N: int, K: int, R: int, dtype: torch.dtype, nf4: tuple[int, bool] | None,
                tf32: bool, arch: int | None):
    """The launch of the forward (op "fwd", y (M, N) looping over K) or grad-x (op "dx", dx (M, K) looping over
    N) kernel. nf4: (blocksize, double quantized) for an NF4 weight, None for a dense one in `dtype`; tf32: fp32
    operands may use TF32 tensor cores. arch: compute capability (90, 80), None under the interpreter."""
    name = f"lora_matmul.{op}"
    need(op in ("fwd", "dx"), name, f"op {op!r} must be 'fwd' or 'dx'")
    need(dtype in _DTYPES, name, f"dtype {dtype} not supported; choose one of {_DTYPES}")
    need(min(M, N, K, R) >= 1 and max(M, N, K, R) < 2**31 and N * K < 2**36, name,
         f"shape M={M} N={N} K={K} R={R} outside 1 <= dim < 2**31, N * K < 2**36")
    fam = family(arch, name)
    precision = "ieee" if dtype == torch.float32 and not tf32 else "tf32"
    bs, double = nf4 if nf4 else (64, False)
    aligned = nf4 is not None and K % bs == 0  # every Llama shape: quantization blocks lie inside rows
    consts = {"BLOCK_R": max(16, min(64, triton.next_power_of_2(R))), "IS_NF4": nf4 is not None, "BS": bs,
              "DOUBLE": double, "K_DIV_BS": aligned, "PRECISION": precision}
    inner, other = ("K", "N") if op == "fwd" else ("N", "K")
    if fam is None:
        bm, bn, bk, group, _ = _INTERP
        configs = (Config.of(4, 1, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group),)
    else:
        kind = ("gather" if nf4 is not None and not aligned else "ieee" if precision == "ieee"
                else "fp32" if dtype == torch.float32 else "half")
        m_range = "small" if M <= 32 else "mid" if M <= 256 else "large"
        configs = tuple(Config.of(w, s, BLOCK_M=bm, **{"BLOCK_" + other: bo, "BLOCK_" + inner: bi}, GROUP_M=8)
                        for bm, bo, bi, w, s in _candidates(fam, kind, m_range))
    wdt = torch.uint8 if nf4 else dtype
    absmax = (torch.uint8 if double else torch.float32) if nf4 else dtype
    extra = torch.float32 if nf4 else dtype
    out_cols = N if op == "fwd" else K
    args = (dtype, wdt, absmax, extra, extra, extra, extra, dtype, dtype, dtype, M, N, K, R, 1.0,
            K if op == "fwd" else N, K, R, R if op == "fwd" else K, out_cols, m_bucket(M))
    kernel, dot_m = _fwd_kernel, "BLOCK_M"
    if op == "dx":
        # fp32 operands on TF32 tensor cores with an NF4 W: `dy @ W` takes W (N-major) as the shared-memory operand,
        # which sm_90's TritonGPUOptimizeDotOperands rejects for this tile ("Illegal shared layout", triton 3.9).
        # The transposed product W^T @ dy^T keeps W in registers and compiles; same TF32 rounding of both operands.
        consts["W_FIRST"] = nf4 is not None and precision == "tf32" and dtype == torch.float32
        kernel, dot_m = _dx_kernel, "BLOCK_K" if consts["W_FIRST"] else "BLOCK_M"
    return Launch(name, kernel, args, consts, configs, key=("M_BUCKET", "N", "K", "R"),
                  options={"enable_fp_fusion": False}, dot_m=dot_m)


def _launch(op, a, weight, lora, lora_w, out, M, N, K, R, scale):
    """Run the fwd or dx kernel of `launch_plan` (unfused absmax math, as in nf4.py)."""
    nf4 = isinstance(weight, NF4Weight)
    wargs = nf4_kernel_args(weight) if nf4 else (weight,) * 6
    tf32 = torch.backends.cuda.matmul.allow_tf32
    plan = launch_plan(op, M, N, K, R, a.dtype, (weight.blocksize, weight.double_quant) if nf4 else None, tf32,
                       arch_of(a))
    cols = K if op == "dx" else N
    block = "BLOCK_K" if op == "dx" else "BLOCK_N"
    args = (a, *wargs, lora, lora_w, out, M, N, K, R, float(scale), a.stride(0), K if nf4 else weight.stride(0),
            lora.stride(0), lora_w.stride(0), out.stride(0), m_bucket(M))
    run(plan, lambda m: (triton.cdiv(M, m["BLOCK_M"]) * triton.cdiv(cols, m[block]),), *args)


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, lora_a, lora_b, scale):
        K, N, R = x.shape[-1], lora_b.shape[0], lora_a.shape[0]
        x2 = x.reshape(-1, K).contiguous()
        M = x2.shape[0]
        xa = x2 @ lora_a.t()  # (M, r)
        y = torch.empty((M, N), dtype=x.dtype, device=x.device)
        _launch("fwd", x2, weight, xa, lora_b, y, M, N, K, R, scale)
        ctx.weight, ctx.scale = weight, scale
        ctx.save_for_backward(x2, xa, lora_a, lora_b)
        return y.view(*x.shape[:-1], N)

    @staticmethod
    def backward(ctx, dy):
        x2, xa, lora_a, lora_b = ctx.saved_tensors
        (M, K), N, R = x2.shape, lora_b.shape[0], lora_a.shape[0]
        dy2 = dy.reshape(-1, N).contiguous()
        dyb = dy2 @ lora_b  # (M, r)
        dx = da = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty((M, K), dtype=dy.dtype, device=dy.device)
            _launch("dx", dy2, ctx.weight, dyb, lora_a, dx, M, N, K, R, ctx.scale)
            dx = dx.view(*dy.shape[:-1], K)
        if ctx.needs_input_grad[2]:
            da = (dyb.t() @ x2).mul_(ctx.scale)
        if ctx.needs_input_grad[3]:
            db = (dy2.t() @ xa).mul_(ctx.scale)
        return dx, None, da, db, None


def _check(x, weight, lora_a, lora_b):
    dense = isinstance(weight, torch.Tensor)
    if not dense and not isinstance(weight, NF4Weight):
        raise TypeError(f"lora_linear: weight must be a Tensor or NF4Weight, got {type(weight).__name__}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"lora_linear: x dtype {x.dtype} not supported; choose float32, float16 or bfloat16")
    if len(weight.shape) != 2 or lora_a.dim() != 2 or lora_b.dim() != 2:
        raise ValueError("lora_linear: weight (N, K), lora_a (r, K) and lora_b (N, r) must be 2-D")
    (N, K), r = weight.shape, lora_a.shape[0]
    if x.shape[-1] != K or lora_a.shape[1] != K or tuple(lora_b.shape) != (N, r):
        raise ValueError(f"lora_linear: shapes do not fit: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
                         f"lora_a {tuple(lora_a.shape)}, lora_b {tuple(lora_b.shape)}; need x (..., K), weight (N, K), "
                         "lora_a (r, K), lora_b (N, r)")  # fmt: skip
    if dense and weight.dtype != x.dtype:
        raise ValueError(f"lora_linear: weight dtype {weight.dtype} differs from x dtype {x.dtype}")
    # The factors share x's dtype, or both are fp32 under bf16/fp16 activations (mixed precision: fp32 trainable
    # factors, so that AdamW's small updates are not rounded away, over a half-precision frozen base).
    mixed = lora_a.dtype == lora_b.dtype == torch.float32 and x.dtype != torch.float32
    for name, t in (("lora_a", lora_a), ("lora_b", lora_b)):
        if t.dtype != x.dtype and not mixed:
            raise ValueError(f"lora_linear: {name} dtype {t.dtype} differs from x dtype {x.dtype} (and the factors "
                             f"are not both float32)")
    devices = {x.device, lora_a.device, lora_b.device, weight.device}
    if len(devices) != 1:
        raise ValueError(f"lora_linear: all operands must be on one device, got {sorted(map(str, devices))}")


def lora_linear(x: torch.Tensor, weight: torch.Tensor | NF4Weight, lora_a: torch.Tensor, lora_b: torch.Tensor,
                scale: float) -> torch.Tensor:  # fmt: skip
    """y = x @ W^T + scale * (x @ lora_a^T) @ lora_b^T; differentiable in x, lora_a and lora_b (W is frozen)."""
    _check(x, weight, lora_a, lora_b)
    # fp32 factors under half-precision x (CPU mixed precision) take the plain-torch path: the kernels take one dtype,
    # and a GPU never falls back silently to the slower path
    if x.is_cuda and lora_a.dtype != x.dtype:
        raise PlanError(f"lora_linear: lora_a/lora_b dtype {lora_a.dtype} differs from x dtype {x.dtype}; on a GPU "
                        "the fused kernels take one dtype (mixed fp32 factors run on CPU only)")
    if not use_triton(x) or x.numel() == 0 or lora_a.dtype != x.dtype:
        if isinstance(weight, NF4Weight) and x.device.type == "cpu" and x.numel():
            return _add_low_rank(_NF4LinearCPU.apply(x, weight), x, lora_a, lora_b, scale)
        if (x.device.type == "cpu" and x.numel() and isinstance(weight, torch.Tensor)
                and x.dtype == weight.dtype == lora_a.dtype == lora_b.dtype):
            return _LoraLinearCPU.apply(x, weight.detach(), lora_a, lora_b, scale)
        return lora_linear_ref(x, weight, lora_a, lora_b, scale)
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().contiguous()
    return _LoraLinear.apply(x, weight, lora_a.contiguous(), lora_b.contiguous(), scale)


class _LoraLinearCPU(torch.autograd.Function):
    """x @ W^T + scale * (x @ A^T) @ B^T on a CPU, one dtype, dense frozen W. The low-rank product is accumulated into
    the base output by one addmm (beta 1), and in backward the low-rank input gradient into grad_x the same way, with
    `scale` applied to the rank-r tensors. Autograd through `base + scale * low` materialized an (N, out) `low`, added
    it, and in backward multiplied the whole (N, out) gradient by `scale`: elementwise passes over the layer's output
    that were ~15% of a SmolLM2 LoRA step on one core (torch.profiler). Saved for backward: x and the (N, r) x @ A^T,
    as autograd saved."""

    @staticmethod
    def forward(ctx, x, w, a, b, scale):
        x2 = x.reshape(-1, x.shape[-1])
        h = x2 @ a.t()
        y = (x2 @ w.t()).addmm_(h, b.t(), alpha=scale)
        ctx.save_for_backward(x, h, w, a, b)
        ctx.scale = scale
        return y.reshape(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x, h, w, a, b = ctx.saved_tensors
        g = dy.reshape(-1, dy.shape[-1])
        dh = (g @ b).mul_(ctx.scale)  # (N, r)
        dx = da = db = None
        if ctx.needs_input_grad[0]:
            dx = (g @ w).addmm_(dh, a).reshape(x.shape)
        if ctx.needs_input_grad[2]:
            da = dh.t() @ x.reshape(-1, x.shape[-1])
        if ctx.needs_input_grad[3]:
            db = (g.t() @ h).mul_(ctx.scale)
        return dx, None, da, db, None


class _NF4LinearRef(torch.autograd.Function):
    """x @ dequant(W)^T that keeps only the 4-bit W for backward: autograd through a plain F.linear would keep the
    dequantized full-precision copy of every layer alive until the backward pass (QLoRA would then use more memory
    than LoRA). The weight is dequantized again in backward, as the Triton kernels do tile by tile."""

    @staticmethod
    def forward(ctx, x, q):
        ctx.q = q
        return F.linear(x, dequantize_nf4_ref(q, x.dtype))

    @staticmethod
    def backward(ctx, dy):
        return (dy @ dequantize_nf4_ref(ctx.q, dy.dtype) if ctx.needs_input_grad[0] else None), None


class _NF4LinearCPU(torch.autograd.Function):
    """x @ dequant(W)^T on CPU through the compiled ops: nf4_linear forward (fp32; W decoded inside the matmul for
    few rows, dequantized once + sgemm for many), nf4_dequantize again in backward (only the 4-bit W is kept)."""

    @staticmethod
    def forward(ctx, x, q):
        ctx.q = q
        if x.dtype == torch.float32:
            return native.nf4_linear(x, q)
        return F.linear(x, native.nf4_dequantize(q, x.dtype))

    @staticmethod
    def backward(ctx, dy):
        return (dy @ native.nf4_dequantize(ctx.q, dy.dtype) if ctx.needs_input_grad[0] else None), None


def lora_linear_ref(x: torch.Tensor, weight: torch.Tensor | NF4Weight, lora_a: torch.Tensor, lora_b: torch.Tensor,
                    scale: float) -> torch.Tensor:  # fmt: skip
    """Plain torch: dequantize W (if NF4) to x's dtype, then three matmuls. Gradients for x, lora_a, lora_b."""
    base = _NF4LinearRef.apply(x, weight) if isinstance(weight, NF4Weight) else F.linear(x, weight.detach())
    return _add_low_rank(base, x, lora_a, lora_b, scale)


def _add_low_rank(base, x, lora_a, lora_b, scale):
    """base + scale * (x @ A^T) @ B^T, the low-rank term computed in the factors' dtype (fp32 ones included)."""
    low = F.linear(F.linear(x.to(lora_a.dtype), lora_a), lora_b)
    if low.dtype == base.dtype:
        return torch.add(base, low, alpha=scale)
    return base + (scale * low).to(base.dtype)
