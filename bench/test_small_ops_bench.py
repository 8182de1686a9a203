"""RMSNorm, RoPE and SwiGLU: our op against torch eager, forward and backward, in GB/s of compulsory traffic.

    pytest bench/test_small_ops_bench.py --benchmark-only

GPU sizes are Llama 3.1 8B's (hidden 4096, 32 heads of 128, intermediate 14336, 16k tokens) in bf16; on a
CPU the sizes are small, in fp32, and "ours" is the plain-torch `_ref` path that CPU users run. Bytes counted
are the tensors each pass must read and write once (weights and per-row statistics left out):
    rms_norm  fwd: x, y            bwd: dy, x, dx
    rope      fwd: x, y            bwd: dy, dx
    swiglu    fwd: gate, up, y     bwd: dy, gate, up, d_gate, d_up
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, median_time, pick, sync

from coalm_kernels.rms_norm import rms_norm
from coalm_kernels.rope import apply_rope, rope_cos_sin, rope_frequencies
from coalm_kernels.swiglu import swiglu

DTYPE = pick(torch.float32, torch.bfloat16)
TOKENS = pick(512, 16384)
HIDDEN = pick(576, 4096)
INTER = pick(1536, 14336)
HEADS, HEAD_DIM, SEQ = pick(9, 32), pick(64, 128), pick(256, 4096)
EPS = 1e-5


def _eager_rms_norm(x, w):
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype)


def _eager_rope(x, cos, sin):  # HF style: full-width cos/sin in x.dtype, rotate_half
    c = torch.cat((cos, cos), -1).to(x.dtype).unsqueeze(-2)
    s = torch.cat((sin, sin), -1).to(x.dtype).unsqueeze(-2)
    x1, x2 = x.chunk(2, -1)
    return x * c + torch.cat((-x2, x1), -1) * s


def _case(op):
    """(ours, eager, inputs needing grad, other args, bytes fwd, bytes bwd)."""
    def randn(*shape):
        return torch.randn(*shape, device=DEVICE, dtype=DTYPE, requires_grad=True)

    e = torch.finfo(DTYPE).bits // 8
    if op == "rms_norm":
        x, w = randn(TOKENS, HIDDEN), torch.rand(HIDDEN, device=DEVICE, dtype=DTYPE).add_(0.5).requires_grad_()
        n = x.numel()
        return (lambda a, b: rms_norm(a, b, EPS)), _eager_rms_norm, (x, w), (), 2 * n * e, 3 * n * e
    if op == "rope":
        x = randn(TOKENS // SEQ or 1, SEQ, HEADS, HEAD_DIM)
        cos, sin = rope_cos_sin(torch.arange(SEQ, device=DEVICE), rope_frequencies(HEAD_DIM, 500000.0))
        n = x.numel()
        return apply_rope, _eager_rope, (x,), (cos, sin), 2 * n * e, 2 * n * e
    gate, up = randn(TOKENS, INTER), randn(TOKENS, INTER)
    n = gate.numel()
    return swiglu, (lambda g, u: F.silu(g) * u), (gate, up), (), 3 * n * e, 5 * n * e


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("op", ["rms_norm", "rope", "swiglu"])
def test_small_op_bandwidth(benchmark, report, op, direction):
    ours, eager, inputs, extra, bytes_fwd, bytes_bwd = _case(op)

    if direction == "fwd":
        def runner(fn):
            def run():
                with torch.no_grad():
                    fn(*inputs, *extra)
            return run
    else:
        def runner(fn):  # one forward, then time the backward alone
            y = fn(*inputs, *extra)
            dy = torch.randn_like(y)
            return lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True)

    ours_run, eager_run = runner(ours), runner(eager)
    benchmark.pedantic(lambda: (ours_run(), sync()), rounds=pick(10, 50), warmup_rounds=3)
    t = benchmark.stats.stats.median
    t_peer = median_time(eager_run)
    nbytes = bytes_fwd if direction == "fwd" else bytes_bwd
    report(f"{op}.{direction}", t, "GB/s", nbytes / t / 1e9, peer="torch eager", peer_time_s=t_peer,
           peer_gbps=nbytes / t_peer / 1e9, dtype=str(DTYPE))
