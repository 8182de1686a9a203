"""Flash attention (causal or not, GQA, packed variable-length sequences), forward, backward and decode.

Math. Per sequence, query head h and its kv head g = h // (Hq / Hkv):
    S = scale * Q_h K_g^T,   P = softmax(S) (row-wise, masked),   O_h = P V_g,   scale = 1/sqrt(D) by default.
Forward streams K/V blocks through SRAM with the online softmax: a running row max m and sum l, the
accumulator rescaled by exp(m_old - m_new) at every block; it writes O and the log-sum-exp per row (fp32, base
2: lse2 = m + log2(l), in log2 units because the kernels use exp2 with the scale pre-multiplied by log2(e)).
Backward recomputes P = exp2(S * log2(e) - lse2) block by block, with the usual preprocess
delta_i = rowsum(dO_i * O_i):
    dV = P^T dO,   dP = dO V^T,   dS = P * (dP - delta),   dQ = scale * dS K,   dK = scale * dS^T Q.
dK/dV programs own one kv block of one kv head and loop over the group's query heads and query blocks, so GQA
needs no atomics and K/V are never repeated in memory; dQ has its own kernel (one query block per program).

Causality is bottom-right aligned: query i of a sequence with Lq queries and Lk keys sees keys
j <= i + (Lk - Lq). Training has Lq == Lk; the decode path has Lq = Tq new tokens at the end of a cache of Lk.
The kernels split each loop into blocks that need no mask (fully visible, fully in range) and the few on the
diagonal or at the sequence end that do, so most iterations run without masking.

Layouts (last dim contiguous; other strides free):
  padded   q (B, T, Hq, D), k/v (B, T, Hkv, D)
  packed   q (total, Hq, D), k/v (total, Hkv, D), cu_seqlens int32 (nseq + 1,) with cu[0] = 0, cu[-1] = total;
           no attention across sequence boundaries; max_seqlen = max length (computed when not given).
  decode   q (B, Tq, Hq, D), k_cache/v_cache (B, Tmax, Hkv, D), cache_seqlens int32 (B,), Tq <= len <= Tmax.

Files: this one (host side), `flash_attn_fwd` (forward and decode kernel), `flash_attn_bwd` (backward kernels),
`flash_attn_plan` (what is launched: kernels, constexprs, candidate configs per GPU arch), `flash_attn_cpu` (the
CPU path through torch SDPA and the plain-torch reference).

Limits. Triton path: head dim 64 or 128, fp16/bf16 on CUDA (fp32 too in the interpreter), Hq a multiple of
Hkv. The CPU path (torch SDPA) takes any head dim and dtype. The decode kernel is the forward kernel with
per-sequence cache lengths and the group's query heads packed into one block of rows (K/V read once per kv
head); it has no split over the cache length, so a single long sequence uses only about B * Hkv programs.
"""

from __future__ import annotations

import math

import torch
import triton

from coalm_kernels._dispatch import use_triton
from coalm_kernels.flash_attn_cpu import reference, sdpa, sdpa_decode
from coalm_kernels.flash_attn_plan import HEAD_DIMS, bucket, launch_plan
from coalm_kernels.plan import arch_of, run

LOG2E = 1.4426950408889634


# --------------------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------------------


def _check(q, k, v, cu_seqlens):
    packed = cu_seqlens is not None
    want = 3 if packed else 4
    what = "(total, H, D) with cu_seqlens" if packed else "(B, T, H, D)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != want:
            raise ValueError(f"flash_attention: {name} must be {what}, got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"flash_attention: k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"flash_attention: q {tuple(q.shape)} and k {tuple(k.shape)} must agree except in heads")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"flash_attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    hq, hkv = q.shape[-2], k.shape[-2]
    if hq % hkv:
        raise ValueError(f"flash_attention: query heads ({hq}) must be a multiple of kv heads ({hkv})")
    if packed:
        if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"flash_attention: cu_seqlens must be 1-D int32 with >= 2 entries, got "
                             f"{cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
        if cu_seqlens.device != q.device:
            raise ValueError(f"flash_attention: cu_seqlens on {cu_seqlens.device}, q on {q.device}")


def _check_triton(q):
    """One-line errors for what no plan covers (see `flash_attn_plan.launch_plan`); the plan re-checks per op."""
    d = q.shape[-1]
    if d not in HEAD_DIMS:
        raise ValueError(f"flash_attention (Triton path): head dim {d} not supported, choose one of {HEAD_DIMS}")
    ok = (torch.float16, torch.bfloat16) if q.is_cuda else (torch.float16, torch.bfloat16, torch.float32)
    if q.dtype not in ok:
        raise ValueError(f"flash_attention (Triton path on {q.device.type}): dtype {q.dtype} not supported, use {ok}")


def _last_contig(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _bths(t, packed):
    """(batch, token, head) strides; a packed tensor has no batch stride (rows are found through cu_seqlens)."""
    return (0, t.stride(0), t.stride(1)) if packed else (t.stride(0), t.stride(1), t.stride(2))


def _geometry(q, cu_seqlens, max_seqlen):
    """(number of sequences, longest length, padded length or 0)."""
    if cu_seqlens is None:
        return q.shape[0], q.shape[1], q.shape[1]
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item())
    return cu_seqlens.numel() - 1, int(max_seqlen), 0


def _lse_buffer(q, nb, packed):
    hq = q.shape[-2]
    if packed:  # (Hq, total): rows indexed by packed position
        lse = torch.empty(hq, q.shape[0], device=q.device, dtype=torch.float32)
        return lse, 0, lse.stride(0)
    lse = torch.empty(nb, hq, q.shape[1], device=q.device, dtype=torch.float32)
    return lse, lse.stride(0), lse.stride(1)


def _plan(op, q, hkv, nb, maxlen, causal, packed):
    return launch_plan(op, q.dtype, q.shape[-2], hkv, q.shape[-1], maxlen, batch=nb, causal=causal, varlen=packed,
                       arch=arch_of(q))


def _forward(q, k, v, causal, cu_seqlens, max_seqlen, scale):
    packed = cu_seqlens is not None
    nb, maxlen, seqlen = _geometry(q, cu_seqlens, max_seqlen)
    hq, hkv = q.shape[-2], k.shape[-2]
    o = torch.empty_like(q)
    lse, slb, slh = _lse_buffer(q, nb, packed)
    cu = cu_seqlens if packed else lse  # any pointer: unused when not VARLEN
    run(_plan("fwd", q, hkv, nb, maxlen, causal, packed), lambda m: (triton.cdiv(maxlen, m["BLOCK_M"]), nb * hq),
        q, k, v, o, lse, cu, cu, *_bths(q, packed), *_bths(k, packed), *_bths(v, packed), *_bths(o, packed),
        slb, slh, seqlen, seqlen, scale * LOG2E, bucket(maxlen), bucket(maxlen))
    return o, lse, slb, slh


def _backward(do, q, k, v, o, lse, slb, slh, causal, cu_seqlens, max_seqlen, scale):
    packed = cu_seqlens is not None
    nb, maxlen, seqlen = _geometry(q, cu_seqlens, max_seqlen)
    hq, hkv = q.shape[-2], k.shape[-2]
    do = _last_contig(do)
    delta = torch.empty_like(lse)
    cu = cu_seqlens if packed else lse
    run(_plan("pre", q, hkv, nb, maxlen, causal, packed), lambda m: (triton.cdiv(maxlen, m["BLOCK_M"]), nb * hq),
        o, do, delta, cu, *_bths(o, packed), *_bths(do, packed), slb, slh, seqlen)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    run(_plan("dkdv", q, hkv, nb, maxlen, causal, packed), lambda m: (triton.cdiv(maxlen, m["BLOCK_N"]), nb * hkv),
        q, k, v, do, dk, dv, lse, delta, cu, *_bths(q, packed), *_bths(k, packed), *_bths(v, packed),
        *_bths(do, packed), *_bths(dk, packed), *_bths(dv, packed), slb, slh, seqlen, scale * LOG2E, scale,
        bucket(maxlen))
    run(_plan("dq", q, hkv, nb, maxlen, causal, packed), lambda m: (triton.cdiv(maxlen, m["BLOCK_M"]), nb * hq),
        q, k, v, do, dq, lse, delta, cu, *_bths(q, packed), *_bths(k, packed), *_bths(v, packed),
        *_bths(do, packed), *_bths(dq, packed), slb, slh, seqlen, scale * LOG2E, scale, bucket(maxlen))
    return dq, dk, dv


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, cu_seqlens, max_seqlen, scale):
        q, k, v = _last_contig(q), _last_contig(k), _last_contig(v)
        o, lse, slb, slh = _forward(q, k, v, causal, cu_seqlens, max_seqlen, scale)
        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens)
        ctx.args = (slb, slh, causal, max_seqlen, scale)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
        slb, slh, causal, max_seqlen, scale = ctx.args
        dq, dk, dv = _backward(do, q, k, v, o, lse, slb, slh, causal, cu_seqlens, max_seqlen, scale)
        return dq, dk, dv, None, None, None, None


def flash_attention(q, k, v, causal=True, cu_seqlens=None, max_seqlen=None, softmax_scale=None):
    """Attention of q over k/v: padded (B, T, H, D) or packed (total, H, D) with cu_seqlens; GQA when k/v have
    fewer heads (Hq % Hkv == 0). Differentiable in q, k, v. Returns a tensor shaped like q."""
    _check(q, k, v, cu_seqlens)
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    if use_triton(q):
        _check_triton(q)
        if cu_seqlens is not None:
            # the kernels index by cu_seqlens[b]; the grid needs the longest sequence (one sync when not given)
            _, max_seqlen, _ = _geometry(q, cu_seqlens, max_seqlen)
        return _FlashAttention.apply(q, k, v, bool(causal), cu_seqlens, max_seqlen, scale)
    return sdpa(q, k, v, causal, cu_seqlens, scale)


def flash_attention_decode(q, k_cache, v_cache, cache_seqlens, softmax_scale=None):
    """Attention of Tq new query tokens (the last Tq positions of each sequence, causal among themselves) over a
    KV cache: q (B, Tq, Hq, D), k_cache/v_cache (B, Tmax, Hkv, D), cache_seqlens (B,) int32 valid lengths that
    include the new tokens (Tq <= len <= Tmax, the caller's contract). Forward only."""
    _check_decode(q, k_cache, v_cache)
    b, tq, hq, d = q.shape
    if cache_seqlens.dtype != torch.int32 or tuple(cache_seqlens.shape) != (b,) or cache_seqlens.device != q.device:
        raise ValueError(f"flash_attention_decode: cache_seqlens must be int32 of shape ({b},) on {q.device}, got "
                         f"{cache_seqlens.dtype} {tuple(cache_seqlens.shape)} on {cache_seqlens.device}")
    scale = 1.0 / math.sqrt(d) if softmax_scale is None else float(softmax_scale)
    if not use_triton(q):
        return sdpa_decode(q, k_cache, v_cache, cache_seqlens, scale)
    _check_triton(q)
    q, k_cache, v_cache = _last_contig(q), _last_contig(k_cache), _last_contig(v_cache)
    hkv, tmax = k_cache.shape[2], k_cache.shape[1]
    o = torch.empty_like(q)
    no_lse = torch.empty(1, device=q.device, dtype=torch.float32)
    rows = tq * (hq // hkv)  # the group's query heads share a program (PACK_GQA)
    plan = launch_plan("decode", q.dtype, hq, hkv, d, tmax, batch=b, tq=tq, arch=arch_of(q))
    run(plan, lambda m: (triton.cdiv(rows, m["BLOCK_M"]), b * hkv),
        q, k_cache, v_cache, o, no_lse, cache_seqlens, cache_seqlens, *_bths(q, False), *_bths(k_cache, False),
        *_bths(v_cache, False), *_bths(o, False), 0, 0, tq, tmax, scale * LOG2E, bucket(tq), bucket(tmax))
    return o


def _check_decode(q, k_cache, v_cache):
    if q.dim() != 4 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"flash_attention_decode: q must be (B, Tq, Hq, D) and caches (B, Tmax, Hkv, D), got "
                         f"{tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    if q.shape[0] != k_cache.shape[0] or q.shape[3] != k_cache.shape[3] or q.shape[1] > k_cache.shape[1]:
        raise ValueError(f"flash_attention_decode: q {tuple(q.shape)} does not fit cache {tuple(k_cache.shape)}")
    if q.dtype != k_cache.dtype or q.dtype != v_cache.dtype:
        raise ValueError(f"flash_attention_decode: dtypes differ: {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if q.shape[2] % k_cache.shape[2]:
        raise ValueError(f"flash_attention_decode: query heads ({q.shape[2]}) must be a multiple of kv heads "
                         f"({k_cache.shape[2]})")


def flash_attention_ref(q, k, v, causal=True, cu_seqlens=None, max_seqlen=None, softmax_scale=None):
    """Plain-torch attention with the same signature and layouts as `flash_attention` (max_seqlen unused); explicit
    softmax in the inputs' dtype (any dtype, fp64 included)."""
    _check(q, k, v, cu_seqlens)
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else softmax_scale
    return reference(q, k, v, causal, cu_seqlens, scale)
