"""Flash attention forward and decode kernel (Triton). The math, layouts and block splitting are described in
`coalm_kernels.flash_attn`, which launches it from `coalm_kernels.flash_attn_plan`."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _fwd_inner(acc, m_i, l_i, q, k_ptr, v_ptr, skt, svt, offs_t, offs_d, lo, hi, Lk, causal_off, qk_scale,
               BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr):
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        if MASKED:
            kv_ok = offs_n < Lk
            k = tl.load(k_ptr + offs_n[:, None] * skt + offs_d[None, :], mask=kv_ok[:, None], other=0.0)
            v = tl.load(v_ptr + offs_n[:, None] * svt + offs_d[None, :], mask=kv_ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptr + offs_n[:, None] * skt + offs_d[None, :])
            v = tl.load(v_ptr + offs_n[:, None] * svt + offs_d[None, :])
        qk = tl.dot(q, tl.trans(k))
        if MASKED:
            keep = kv_ok[None, :]
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_t[:, None] + causal_off)
            qk = tl.where(keep, qk * qk_scale, float("-inf"))
        else:
            qk = qk * qk_scale
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, CU, SEQLENS_K,
                sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh, slb, slh,
                seqlen_q, seqlen_k, qk_scale, tune_q, tune_k,
                HQ: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                VARLEN: tl.constexpr, KV_LENS: tl.constexpr, PACK_GQA: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Heaviest causal blocks (last rows) first, so the tail of the grid is short ones.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    if PACK_GQA:  # one program per kv head; its rows are (query, head in group) pairs, K/V read once per group
        b = pid_bh // (HQ // GROUP)
        hk = pid_bh % (HQ // GROUP)
        hq = hk * GROUP
    else:
        b = pid_bh // HQ
        hq = pid_bh % HQ
        hk = hq // GROUP
    b64 = b.to(tl.int64)
    q_off = b64 * sqb + hq * sqh
    k_off = b64 * skb + hk * skh
    v_off = b64 * svb + hk * svh
    o_off = b64 * sob + hq * soh
    l_off = b64 * slb + hq * slh
    if VARLEN:
        start = tl.load(CU + b)
        Lq = tl.load(CU + b + 1) - start
        Lk = Lq
        s64 = start.to(tl.int64)
        q_off += s64 * sqt
        k_off += s64 * skt
        v_off += s64 * svt
        o_off += s64 * sot
        l_off += s64
    else:
        Lq = seqlen_q
        if KV_LENS:
            Lk = tl.load(SEQLENS_K + b)
        else:
            Lk = seqlen_k
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    if PACK_GQA:
        n_rows = Lq * GROUP
        offs_t = offs_m // GROUP  # query index in the sequence
        offs_g = offs_m % GROUP
        row_q = offs_t * sqt + offs_g * sqh
        row_o = offs_t * sot + offs_g * soh
        t_lo = m0 // GROUP
        t_hi = (m0 + BLOCK_M - 1) // GROUP + 1
    else:
        n_rows = Lq
        offs_t = offs_m
        row_q = offs_m * sqt
        row_o = offs_m * sot
        t_lo = m0
        t_hi = m0 + BLOCK_M
    if m0 >= n_rows:
        return
    causal_off = Lk - Lq
    row_ok = offs_t < Lq
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + q_off + row_q[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    if CAUSAL:
        # keys below the block's first visible diagonal are seen by every row; t_lo < Lq keeps hi_full < Lk
        hi_full = (t_lo + causal_off) // BLOCK_N * BLOCK_N
        hi = tl.minimum(t_hi + causal_off, Lk)
    else:
        hi_full = Lk // BLOCK_N * BLOCK_N
        hi = Lk
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, K + k_off, V + v_off, skt, svt, offs_t, offs_d, 0, hi_full, Lk,
                               causal_off, qk_scale, BLOCK_N, CAUSAL, False)
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, K + k_off, V + v_off, skt, svt, offs_t, offs_d, hi_full, hi, Lk,
                               causal_off, qk_scale, BLOCK_N, CAUSAL, True)
    if not KV_LENS:  # decode is forward-only and needs no log-sum-exp
        tl.store(LSE + l_off + offs_m, m_i + tl.log2(l_i), mask=row_ok)
    out = acc / l_i[:, None]
    tl.store(O + o_off + row_o[:, None] + offs_d[None, :], out.to(O.dtype.element_ty), mask=row_ok[:, None])
