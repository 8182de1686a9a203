"""Flash attention backward kernels (Triton): the delta preprocess, dK/dV and dQ. The math, layouts and block
splitting are described in `coalm_kernels.flash_attn`, which launches them (autotuned on GPU)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _bwd_preprocess(O, DO, DELTA, CU, sob, sot, soh, sdb, sdt, sdh, slb, slh, seqlen,
                    HQ: tl.constexpr, HEAD_DIM: tl.constexpr, VARLEN: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HQ
    hq = pid_bh % HQ
    b64 = b.to(tl.int64)
    o_off = b64 * sob + hq * soh
    d_off = b64 * sdb + hq * sdh
    l_off = b64 * slb + hq * slh
    if VARLEN:
        start = tl.load(CU + b)
        L = tl.load(CU + b + 1) - start
        s64 = start.to(tl.int64)
        o_off += s64 * sot
        d_off += s64 * sdt
        l_off += s64
    else:
        L = seqlen
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = offs_m < L
    o = tl.load(O + o_off + offs_m[:, None] * sot + offs_d[None, :], mask=ok[:, None], other=0.0)
    do = tl.load(DO + d_off + offs_m[:, None] * sdt + offs_d[None, :], mask=ok[:, None], other=0.0)
    tl.store(DELTA + l_off + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=ok)


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, q_ptr, do_ptr, l_ptr, d_ptr, sqt, sdt, offs_n, offs_d, lo, hi, Lq, qk_scale,
                    BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr):
    offs_m0 = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        if MASKED:
            row_ok = offs_m < Lq
            q = tl.load(q_ptr + offs_m[:, None] * sqt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
            do = tl.load(do_ptr + offs_m[:, None] * sdt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
            lse = tl.load(l_ptr + offs_m, mask=row_ok, other=0.0)
            delta = tl.load(d_ptr + offs_m, mask=row_ok, other=0.0)
        else:
            q = tl.load(q_ptr + offs_m[:, None] * sqt + offs_d[None, :])
            do = tl.load(do_ptr + offs_m[:, None] * sdt + offs_d[None, :])
            lse = tl.load(l_ptr + offs_m)
            delta = tl.load(d_ptr + offs_m)
        pT = tl.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :])  # (BLOCK_N, BLOCK_M)
        if MASKED:
            keep = row_ok[None, :]
            if CAUSAL:
                keep = keep & (offs_m[None, :] >= offs_n[:, None])
            pT = tl.where(keep, pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv)
        dpT = tl.dot(v, tl.trans(do))
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(q.dtype), q, dk)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, CU,
                     sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh,
                     sdkb, sdkt, sdkh, sdvb, sdvt, sdvh, slb, slh,
                     seqlen, qk_scale, softmax_scale, tune_q,
                     HKV: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                     VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HKV
    hk = pid_bh % HKV
    b64 = b.to(tl.int64)
    q_off = b64 * sqb
    do_off = b64 * sdb
    l_off = b64 * slb
    k_off = b64 * skb + hk * skh
    v_off = b64 * svb + hk * svh
    dk_off = b64 * sdkb + hk * sdkh
    dv_off = b64 * sdvb + hk * sdvh
    if VARLEN:
        start = tl.load(CU + b)
        L = tl.load(CU + b + 1) - start
        s64 = start.to(tl.int64)
        q_off += s64 * sqt
        do_off += s64 * sdt
        l_off += s64
        k_off += s64 * skt
        v_off += s64 * svt
        dk_off += s64 * sdkt
        dv_off += s64 * sdvt
    else:
        L = seqlen
    n0 = pid_n * BLOCK_N
    if n0 >= L:
        return
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < L
    k = tl.load(K + k_off + offs_n[:, None] * skt + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    v = tl.load(V + v_off + offs_n[:, None] * svt + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    # Query blocks: [lo, lo_full) straddle the diagonal (masked); [lo_full, L_full) are fully visible and in
    # range; [max(lo_full, L_full), L) is the ragged last block (masked). The three ranges never overlap.
    L_full = L // BLOCK_M * BLOCK_M
    if CAUSAL:
        lo = n0 // BLOCK_M * BLOCK_M
        lo_full = tl.cdiv(n0 + BLOCK_N - 1, BLOCK_M) * BLOCK_M
    else:
        lo = 0
        lo_full = 0
    for g in range(GROUP):
        hq = hk * GROUP + g
        q_ptr = Q + q_off + hq * sqh
        do_ptr = DO + do_off + hq * sdh
        l_ptr = LSE + l_off + hq * slh
        d_ptr = DELTA + l_off + hq * slh
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_ptr, do_ptr, l_ptr, d_ptr, sqt, sdt, offs_n, offs_d,
                                 lo, tl.minimum(lo_full, L), L, qk_scale, BLOCK_M, CAUSAL, True)
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_ptr, do_ptr, l_ptr, d_ptr, sqt, sdt, offs_n, offs_d,
                                 lo_full, L_full, L, qk_scale, BLOCK_M, CAUSAL, False)
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_ptr, do_ptr, l_ptr, d_ptr, sqt, sdt, offs_n, offs_d,
                                 tl.maximum(lo_full, L_full), L, L, qk_scale, BLOCK_M, CAUSAL, True)
    dk = dk * softmax_scale
    tl.store(DK + dk_off + offs_n[:, None] * sdkt + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + dv_off + offs_n[:, None] * sdvt + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _bwd_dq_inner(dq, q, do, lse, delta, k_ptr, v_ptr, skt, svt, offs_m, offs_d, lo, hi, L, qk_scale,
                  BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr):
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        if MASKED:
            kv_ok = offs_n < L
            k = tl.load(k_ptr + offs_n[:, None] * skt + offs_d[None, :], mask=kv_ok[:, None], other=0.0)
            v = tl.load(v_ptr + offs_n[:, None] * svt + offs_d[None, :], mask=kv_ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptr + offs_n[:, None] * skt + offs_d[None, :])
            v = tl.load(v_ptr + offs_n[:, None] * svt + offs_d[None, :])
        p = tl.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None])
        if MASKED:
            keep = kv_ok[None, :]
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None])
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, CU,
                   sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh, sdqb, sdqt, sdqh, slb, slh,
                   seqlen, qk_scale, softmax_scale, tune_q,
                   HQ: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                   VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HQ
    hq = pid_bh % HQ
    hk = hq // GROUP
    b64 = b.to(tl.int64)
    q_off = b64 * sqb + hq * sqh
    do_off = b64 * sdb + hq * sdh
    dq_off = b64 * sdqb + hq * sdqh
    l_off = b64 * slb + hq * slh
    k_off = b64 * skb + hk * skh
    v_off = b64 * svb + hk * svh
    if VARLEN:
        start = tl.load(CU + b)
        L = tl.load(CU + b + 1) - start
        s64 = start.to(tl.int64)
        q_off += s64 * sqt
        do_off += s64 * sdt
        dq_off += s64 * sdqt
        l_off += s64
        k_off += s64 * skt
        v_off += s64 * svt
    else:
        L = seqlen
    m0 = pid_m * BLOCK_M
    if m0 >= L:
        return
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < L
    q = tl.load(Q + q_off + offs_m[:, None] * sqt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + do_off + offs_m[:, None] * sdt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + l_off + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + l_off + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    if CAUSAL:
        hi_full = m0 // BLOCK_N * BLOCK_N
        hi = tl.minimum(m0 + BLOCK_M, L)
    else:
        hi_full = L // BLOCK_N * BLOCK_N
        hi = L
    dq = _bwd_dq_inner(dq, q, do, lse, delta, K + k_off, V + v_off, skt, svt, offs_m, offs_d, 0, hi_full, L,
                       qk_scale, BLOCK_N, CAUSAL, False)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, K + k_off, V + v_off, skt, svt, offs_m, offs_d, hi_full, hi, L,
                       qk_scale, BLOCK_N, CAUSAL, True)
    dq = dq * softmax_scale
    tl.store(DQ + dq_off + offs_m[:, None] * sdqt + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])
