"""Launch plans of the flash-attention kernels (`coalm_kernels.flash_attn`, `coalm_kernels.flash_attn_bwd`): for each
launch (forward, decode, backward preprocess, dK/dV, dQ) the kernel, its constexprs and the candidate block
configs per GPU arch. The host code launches from these plans and `coalm_kernels.aot` compiles exactly them.

Candidates were chosen by compiling every one ahead of time for sm_90 and sm_80 (`python -m coalm_kernels.aot
--full`, report in bench/aot_report.md): each fits the arch's shared memory, spills no register at bf16/fp16
and (sm_90) runs its tl.dot ops with BLOCK_M >= 64 on wgmma. Few candidates keep the first call's compile short.
"""

from __future__ import annotations

import torch

from coalm_kernels.flash_attn_bwd import _bwd_dkdv_kernel, _bwd_dq_kernel, _bwd_preprocess
from coalm_kernels.flash_attn_fwd import _fwd_kernel
from coalm_kernels.plan import Config, Launch, family, need

HEAD_DIMS = (64, 128)
PRE_BLOCK = 64  # rows per program of the delta preprocess (memory bound)
_GPU_DTYPES = (torch.float16, torch.bfloat16)
_INTERP_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# (BLOCK_M, BLOCK_N, warps, stages) per arch family and launch, optionally per head dim; "decode" is for <= 64
# packed query rows, "decode_large" for more (the decode kernel's extra index math spills sm_80's (64, 64, 4) tile).
# dK/dV holds two (BLOCK_N, D) fp32 accumulators plus its K and V blocks for the whole loop, which is what spills
# at D=128 in larger tiles: sm_90 keeps wgmma only with BLOCK_M=16 and one stage there.
_CONFIGS = {
    (90, "fwd"): [(128, 64, 8, 3), (64, 64, 4, 3)],
    (90, "decode"): [(16, 64, 4, 3), (64, 64, 4, 3)],
    (90, "decode_large"): [(128, 64, 8, 3), (64, 64, 4, 3)],
    (90, "dkdv", 64): [(32, 64, 8, 3), (64, 64, 8, 2)],
    (90, "dkdv", 128): [(16, 32, 4, 3), (16, 64, 8, 1)],
    (90, "dq"): [(128, 64, 8, 3), (64, 64, 4, 3)],
    (80, "fwd"): [(128, 64, 8, 3), (64, 64, 4, 3)],
    (80, "decode"): [(16, 64, 4, 3), (32, 64, 8, 3)],
    (80, "decode_large"): [(128, 64, 8, 3), (64, 32, 4, 3)],
    (80, "dkdv", 64): [(32, 64, 8, 3), (16, 64, 4, 3)],
    (80, "dkdv", 128): [(32, 64, 8, 2), (64, 64, 8, 2)],
    (80, "dq"): [(128, 32, 8, 3), (64, 64, 4, 3)],
}
# The interpreter runs every block in Python: small fixed blocks; BLOCK_M > BLOCK_N in the forward exercises
# several masked blocks per row.
_INTERP = {"fwd": (64, 32), "decode": (16, 32), "decode_large": (64, 32), "dkdv": (32, 64), "dq": (64, 32)}
_TUNE_KEY = ("tune_q", "HEAD_DIM", "CAUSAL", "VARLEN")


def bucket(n: int) -> int:
    """Autotune key for a length: powers of two, so nearby lengths share a tuned config."""
    n = max(int(n), 1)
    return 1 << (n - 1).bit_length()


def _configs(fam, op, head_dim):
    if fam is None:
        m, n = _INTERP[op]
        return (Config.of(4, 1, BLOCK_M=m, BLOCK_N=n),)
    specs = _CONFIGS[(fam, op, head_dim) if (fam, op, head_dim) in _CONFIGS else (fam, op)]
    return tuple(Config.of(w, s, BLOCK_M=m, BLOCK_N=n) for m, n, w, s in specs)


def launch_plan(op: str, dtype: torch.dtype, hq: int, hkv: int, head_dim: int, seqlen: int, *, batch: int = 1,
                causal: bool = True, varlen: bool = False, tq: int = 1, arch: int | None = None) -> Launch:
    """The launch of one flash-attention kernel. op: "fwd" (training/prefill forward), "decode" (tq new tokens over
    a cache of seqlen), "pre" (backward delta), "dkdv", "dq". Shapes: `batch` sequences of up to `seqlen` tokens,
    padded (B, T, H, D) or packed (varlen: (total, H, D) with cu_seqlens); contiguous tensors."""
    name = f"flash_attn.{op}"
    need(op in ("fwd", "decode", "pre", "dkdv", "dq"), name, f"op {op!r} not one of fwd, decode, pre, dkdv, dq")
    fam = family(arch, name)
    ok = _INTERP_DTYPES if fam is None else _GPU_DTYPES
    need(dtype in ok, name, f"dtype {dtype} not supported on {'the interpreter' if fam is None else 'a GPU'}; use {ok}")
    need(head_dim in HEAD_DIMS, name, f"head_dim {head_dim} not supported, choose one of {HEAD_DIMS}")
    need(hq >= 1 and hkv >= 1 and hq % hkv == 0, name, f"hq ({hq}) must be a multiple of hkv ({hkv})")
    need(seqlen >= 1 and batch >= 1 and 1 <= tq <= seqlen, name, f"seqlen {seqlen}, batch {batch}, tq {tq} out of range")
    d, group = head_dim, hq // hkv
    f32, i32 = torch.float32, torch.int32
    if op == "decode":
        rows = tq * group  # the group's query heads share a program (PACK_GQA)
        q_s, kv_s = (tq * hq * d, hq * d, d), (seqlen * hkv * d, hkv * d, d)
        args = (dtype, dtype, dtype, dtype, f32, i32, i32, *q_s, *kv_s, *kv_s, *q_s, 0, 0, tq, seqlen, 1.0,
                bucket(tq), bucket(seqlen))
        consts = {"HQ": hq, "GROUP": group, "HEAD_DIM": d, "CAUSAL": True, "VARLEN": False, "KV_LENS": True,
                  "PACK_GQA": True}
        key = _TUNE_KEY + ("tune_k", "KV_LENS", "PACK_GQA")
        configs = _configs(fam, "decode" if rows <= 64 else "decode_large", d)
        return Launch(name, _fwd_kernel, args, consts, configs, key, dot_m="BLOCK_M")
    total = batch * seqlen
    pad = 0 if varlen else seqlen

    def strides(h):  # (batch, token, head) strides of a contiguous tensor with h heads
        return (0, h * d, d) if varlen else (seqlen * h * d, h * d, d)

    lse = (0, total) if varlen else (hq * seqlen, seqlen)  # (Hq, total) packed, (B, Hq, T) padded
    cu = i32 if varlen else f32  # an unused pointer (the lse buffer) when not packed
    if op == "pre":
        args = (dtype, dtype, f32, cu, *strides(hq), *strides(hq), *lse, pad)
        consts = {"HQ": hq, "HEAD_DIM": d, "VARLEN": varlen, "BLOCK_M": 32 if fam is None else PRE_BLOCK}
        return Launch(name, _bwd_preprocess, args, consts, (Config.of(4, 3),))
    common = {"GROUP": group, "HEAD_DIM": d, "CAUSAL": causal, "VARLEN": varlen}
    q, kv = strides(hq), strides(hkv)
    if op == "fwd":
        args = (dtype, dtype, dtype, dtype, f32, cu, cu, *q, *kv, *kv, *q, *lse, pad, pad, 1.0, bucket(seqlen),
                bucket(seqlen))
        consts = {"HQ": hq, **common, "KV_LENS": False, "PACK_GQA": False}
        return Launch(name, _fwd_kernel, args, consts, _configs(fam, "fwd", d),
                      _TUNE_KEY + ("tune_k", "KV_LENS", "PACK_GQA"), dot_m="BLOCK_M")
    if op == "dkdv":
        args = (dtype, dtype, dtype, dtype, dtype, dtype, f32, f32, cu, *q, *kv, *kv, *q, *kv, *kv, *lse, pad, 1.0,
                1.0, bucket(seqlen))
        # its tl.dot ops are (BLOCK_N x ...): one kv block per program
        return Launch(name, _bwd_dkdv_kernel, args, {"HKV": hkv, **common}, _configs(fam, "dkdv", d), _TUNE_KEY,
                      dot_m="BLOCK_N")
    args = (dtype, dtype, dtype, dtype, dtype, f32, f32, cu, *q, *kv, *kv, *q, *q, *lse, pad, 1.0, 1.0,
            bucket(seqlen))
    return Launch(name, _bwd_dq_kernel, args, {"HQ": hq, **common}, _configs(fam, "dq", d), _TUNE_KEY,
                  dot_m="BLOCK_M")
