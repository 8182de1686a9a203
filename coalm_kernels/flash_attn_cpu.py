"""Flash attention without Triton: the CPU path through torch SDPA (its fused CPU kernels, differentiable through
autograd) and the plain-torch reference the tests compare against. Layouts as in `coalm_kernels.flash_attn`."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------------------
# CPU path: torch SDPA (its fused CPU kernels; differentiable through autograd)
# --------------------------------------------------------------------------------------------------------------


def _sdpa_heads(q, k, v, causal, scale, mask=None):
    """(..., T, H, D) inputs -> SDPA over (..., H, T, D) with native GQA -> (..., T, H, D)."""
    if q.dim() == 3:  # one packed sequence: SDPA's fused CPU kernel needs a batch dim (3-D input takes the math
        return _sdpa_heads(q[None], k[None], v[None], causal, scale, mask)[0]  # path, which keeps T x T probs)
    q, k, v = q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2)
    gqa = q.shape[-3] != k.shape[-3]
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale,
                                       enable_gqa=gqa)
    return o.transpose(-3, -2)


def sdpa(q, k, v, causal, cu_seqlens, scale):
    if cu_seqlens is None:
        return _sdpa_heads(q, k, v, causal, scale)
    # One SDPA call per sequence: no (total x total) mask, and each call takes the fused causal kernel.
    bounds = cu_seqlens.tolist()
    outs = [_sdpa_heads(q[s:e], k[s:e], v[s:e], causal, scale) for s, e in itertools.pairwise(bounds) if e > s]
    return torch.cat(outs, 0) if outs else torch.empty_like(q)


def _decode_mask(cache_seqlens, tq, tmax, device):
    """(B, 1, Tq, Tmax) bool: new token i of sequence b sits at position len_b - Tq + i and sees keys <= it."""
    pos = cache_seqlens.to(device=device, dtype=torch.long)[:, None] - tq + torch.arange(tq, device=device)
    return (torch.arange(tmax, device=device)[None, None, :] <= pos[:, :, None])[:, None]


# A few new tokens over a bf16/fp16 cache: SDPA's CPU kernels are several times slower in bf16 than in fp32 at this
# shape (measured on an AVX512-BF16 EPYC, B 8, Hq 9, Hkv 3, D 64, 400-1,030 cached tokens, copies included: 2.3-5x),
# so decode upcasts; the result is also closer to exact. At a few hundred queries (prefill) bf16 is as fast.
_UPCAST_MAX_TQ = 16


def sdpa_decode(q, k_cache, v_cache, cache_seqlens, scale):
    tq, tmax = q.shape[1], k_cache.shape[1]
    lens = cache_seqlens.tolist()
    if min(lens) < tq or max(lens) > tmax:
        raise ValueError(f"flash_attention_decode: cache_seqlens must lie in [Tq={tq}, Tmax={tmax}], got {lens}")
    # Only the filled part of the cache: a generation cache is allocated for the longest answer up front, and the
    # masked-out tail would otherwise cost as much as the rest at every step.
    tk = max(lens)
    k, v = k_cache[:, :tk], v_cache[:, :tk]
    out_dtype = q.dtype
    if q.dtype in (torch.bfloat16, torch.float16) and tq <= _UPCAST_MAX_TQ:
        q, k, v = q.float(), k.float(), v.float()
    if tq == 1 and min(lens) == tk:  # one new token per sequence, all at the end: it sees every key, no mask
        return _sdpa_heads(q, k, v, False, scale).to(out_dtype)
    return _sdpa_heads(q, k, v, False, scale, _decode_mask(cache_seqlens, tq, tk, q.device)).to(out_dtype)


def cache_attention(q, k, v, scale):
    """One sequence's new tokens against its head-major cache (`engine.serving.cache.KVCache`): q (Tq, Hq, D) are the
    last Tq of the L positions in k/v (Hkv, L, D); causal, aligned bottom-right. -> (Tq, Hq, D).

    At Tq = 1 (decode) the token sees every key: no mask, and k/v are exactly the filled part of the cache. A chunk
    from position 0 (Tq = L) takes SDPA's causal kernel; a later chunk of a long prompt gets an explicit (Tq, L)
    mask, small next to the scores themselves."""
    tq, tk = q.shape[0], k.shape[1]
    out_dtype = q.dtype
    if q.dtype in (torch.bfloat16, torch.float16) and tq <= _UPCAST_MAX_TQ:
        q, k, v = q.float(), k.float(), v.float()
    mask = None
    if 1 < tq < tk:
        mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
    o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k[None], v[None], attn_mask=mask,
                                       is_causal=tq > 1 and tq == tk, scale=scale, enable_gqa=q.shape[1] != k.shape[0])
    return o[0].transpose(0, 1).to(out_dtype)


# --------------------------------------------------------------------------------------------------------------
# Reference: explicit softmax in the inputs' dtype (any dtype, fp64 included)
# --------------------------------------------------------------------------------------------------------------


def reference(q, k, v, causal, cu_seqlens, scale):
    """Plain-torch attention (`flash_attention_ref` checks the inputs first)."""
    if cu_seqlens is None:
        return torch.stack([_ref_one(q[i], k[i], v[i], causal, scale) for i in range(q.shape[0])])
    bounds = cu_seqlens.tolist()
    return torch.cat([_ref_one(q[s:e], k[s:e], v[s:e], causal, scale) for s, e in itertools.pairwise(bounds)])


def _ref_one(q, k, v, causal, scale):
    """One sequence: q (Tq, Hq, D), k/v (Tk, Hkv, D); causal aligned bottom-right (query i sees keys <= i + Tk - Tq)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, k) * scale  # (H, Tq, Tk)
    if causal:
        tq, tk = q.shape[0], k.shape[0]
        visible = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
        s = s.masked_fill(~visible, float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(s, dim=-1), v)
