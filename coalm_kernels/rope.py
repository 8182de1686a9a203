"""Rotary position embeddings (RoPE), HF/Llama "rotate half" convention, with Llama 3.1 frequency scaling.

Math: for a head vector x of size D, split into halves x1 = x[:D/2], x2 = x[D/2:] (pairs (i, i + D/2), the
layout of HF-converted Llama weights), and angle theta_i = pos * inv_freq_i:
    forward   y1 = x1 cos - x2 sin,   y2 = x2 cos + x1 sin
    backward  rotation by -theta:  dx1 = dy1 cos + dy2 sin,   dx2 = dy2 cos - dy1 sin
inv_freq_i = theta_base ^ (-2i / D); with Llama 3.1 scaling (`rope_frequencies(..., scaling=...)`) the low
frequencies (wavelength > original_ctx / low_freq_factor) are divided by `factor`, the high ones
(wavelength < original_ctx / high_freq_factor) are kept, and the band in between is interpolated smoothly.

Layout and limits:
  x (..., T, H, D), last dim contiguous (copied otherwise), D even; cos/sin (T, D/2) shared by every leading
  index, or (B, T, D/2) per sequence with x (B, T, H, D) (B may be 1 to broadcast). cos/sin are read as fp32
  and are not differentiated. The rotation runs in fp32 with one rounding to x.dtype; the output is contiguous.
  One program per (leading index, t) rotates all H heads: the H x D/2 tile must fit in registers.
"""

import math

import torch
import triton
import triton.language as tl

from coalm_kernels._dispatch import use_triton
from coalm_kernels.plan import Config, Launch, arch_of, family, need, run

_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, y_ptr, T, H, HALF,
                 stride_xb, stride_xt, stride_xh, stride_cb, stride_ct,
                 SIGN: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // T
    t = pid % T
    d = tl.arange(0, BLOCK_D)
    h = tl.arange(0, BLOCK_H)
    dmask = d < HALF
    c = tl.load(cos_ptr + b * stride_cb + t * stride_ct + d, mask=dmask, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + b * stride_cb + t * stride_ct + d, mask=dmask, other=0.0).to(tl.float32) * SIGN
    c = c[None, :]
    s = s[None, :]
    mask = (h[:, None] < H) & dmask[None, :]
    x_offs = b * stride_xb + t * stride_xt + h[:, None] * stride_xh + d[None, :]
    x1 = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + x_offs + HALF, mask=mask, other=0.0).to(tl.float32)
    # the output is a fresh contiguous (B, T, H, D) tensor
    y_offs = pid * H * 2 * HALF + h[:, None] * 2 * HALF + d[None, :]
    tl.store(y_ptr + y_offs, (x1 * c - x2 * s).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + y_offs + HALF, (x2 * c + x1 * s).to(y_ptr.dtype.element_ty), mask=mask)


def launch_plan(T: int, H: int, D: int, dtype: torch.dtype, sign: float, per_sequence: bool,
                arch: int | None) -> Launch:
    """The rotation of x (B, T, H, D) contiguous by cos/sin (T, D/2) or, per_sequence, (B, T, D/2); sign -1.0
    rotates back (backward)."""
    name = "rope.rotate"
    need(D % 2 == 0 and min(T, H, D) >= 1, name, f"x (.., T={T}, H={H}, D={D}) needs D even and every dim >= 1")
    need(dtype.is_floating_point, name, f"dtype {dtype} is not a float type")
    need(sign in (1.0, -1.0), name, f"sign {sign} must be 1.0 or -1.0")
    family(arch, name)
    block_h, block_d = triton.next_power_of_2(H), triton.next_power_of_2(D // 2)
    need(block_h * block_d <= 65536, name, f"H x D/2 = {H} x {D // 2} does not fit one program's registers")
    args = (dtype, torch.float32, torch.float32, dtype, T, H, D // 2, T * H * D, H * D, D,
            T * D // 2 if per_sequence else 0, D // 2)
    return Launch(name, _rope_kernel, args, {"SIGN": sign, "BLOCK_H": block_h, "BLOCK_D": block_d},
                  (Config.of(4 if block_h * block_d <= 4096 else 8, 3),))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    T, H, D = x.shape[-3:]
    x4 = x.reshape(-1, T, H, D)  # (B, T, H, D)
    if x4.stride(-1) != 1:
        x4 = x4.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    stride_cb = cos.stride(0) if cos.dim() == 3 and cos.shape[0] > 1 else 0
    y = torch.empty(x4.shape, dtype=x.dtype, device=x.device)
    plan = launch_plan(T, H, D, x.dtype, sign, stride_cb != 0, arch_of(x))
    run(plan, (x4.shape[0] * T,), x4, cos, sin, y, T, H, D // 2, x4.stride(0), x4.stride(1), x4.stride(2),
        stride_cb, cos.stride(-2))
    return y.view(x.shape)


class _RoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return _rotate(dy, cos, sin, -1.0), None, None


def _check(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    if x.dim() < 3 or x.shape[-1] % 2:
        raise ValueError(f"apply_rope: x must be (..., T, H, D) with D even, got shape {tuple(x.shape)}")
    T, D = x.shape[-3], x.shape[-1]
    if cos.shape != sin.shape:
        raise ValueError(f"apply_rope: cos and sin shapes differ: {tuple(cos.shape)} vs {tuple(sin.shape)}")
    if cos.dim() not in (2, 3) or cos.shape[-2:] != (T, D // 2):
        raise ValueError(f"apply_rope: cos/sin must be (T, D/2) = ({T}, {D // 2}) or (B, {T}, {D // 2}), "
                         f"got {tuple(cos.shape)}")
    if cos.dim() == 3 and cos.shape[0] != 1 and (x.dim() != 4 or x.shape[0] != cos.shape[0]):
        raise ValueError(f"apply_rope: per-sequence cos/sin {tuple(cos.shape)} need x of shape "
                         f"({cos.shape[0]}, T, H, D), got {tuple(x.shape)}")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every head of x (..., T, H, D) by the angles whose cos/sin are (T, D/2) or (B, T, D/2)."""
    _check(x, cos, sin)
    if use_triton(x) and x.numel() > 0:
        return _RoPE.apply(x, cos, sin)
    return apply_rope_ref(x, cos, sin)


def rope_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """inv_freq (head_dim/2,) fp32, optionally with Llama 3.1 scaling.

    scaling: {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"} (a
    "rope_type": "llama3" entry, as in HF configs, is accepted and ignored).
    """
    if head_dim % 2:
        raise ValueError(f"rope_frequencies: head_dim must be even, got {head_dim}")
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    scaling = dict(scaling)
    kind = scaling.pop("rope_type", scaling.pop("type", "llama3"))
    if kind != "llama3":
        raise ValueError(f"rope_frequencies: unsupported rope scaling type {kind!r}; supported: 'llama3'")
    unknown, missing = set(scaling) - set(_SCALING_KEYS), set(_SCALING_KEYS) - set(scaling)
    if unknown or missing:
        raise ValueError(f"rope_frequencies: scaling keys must be exactly {list(_SCALING_KEYS)}; "
                         f"unknown {sorted(unknown)}, missing {sorted(missing)}")
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    ctx = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    # in the middle band the frequency moves linearly (in ctx / wavelen) from inv_freq / factor to inv_freq
    smooth = (ctx / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(wavelen > ctx / low, inv_freq / factor, blended)
    return torch.where(wavelen < ctx / high, inv_freq, scaled)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin fp32 of shape positions.shape + (D/2,): (T, D/2) for positions (T,), (B, T, D/2) for (B, T)."""
    if positions.dim() not in (1, 2) or positions.is_floating_point():
        raise ValueError(f"rope_cos_sin: positions must be an integer tensor (T,) or (B, T), "
                         f"got {positions.dtype} {tuple(positions.shape)}")
    angles = positions.float()[..., None] * inv_freq.to(device=positions.device, dtype=torch.float32)
    return angles.cos(), angles.sin()


def apply_rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Plain torch rotate-half RoPE in fp32, rounded once to x.dtype (the CPU path)."""
    c, s = cos.float().unsqueeze(-2), sin.float().unsqueeze(-2)  # (..., T, 1, D/2): broadcast over heads
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)
