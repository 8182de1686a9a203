"""Flash attention throughput in TFLOP/s: forward, backward and forward+backward, against torch SDPA's flash backend
and (when importable) the `flash-attn` package.

    python -m pytest bench/test_flash_attn_bench.py --benchmark-only -q

Shapes: Llama 3.1 8B attention, Hq 32, Hkv 8, D 128, bf16, causal, at sequence lengths 1k/4k/8k/16k with the
batch chosen so that every point holds 16k tokens; causal only on the GPU, since each causal/non-causal variant
costs another round of kernel compiles and autotuning (the whole file must stay under ~2 minutes on an H100).
CPU: tiny fp32 shapes, causal and not, where our op is the SDPA path itself (a smoke run of the plumbing).

FLOPs (two matmuls of 2*T*T*D each per head): forward 4 * B * T * T * Hq * D; backward 2.5x that (five matmuls
where the forward has two); forward+backward 3.5x; causal halves each. The SDPA peer gets K/V already expanded
to Hq heads (its flash kernel has no GQA), made outside the timed region. Target on H100: at least SDPA flash's
speed at 4k-16k causal, >= 450 TFLOP/s forward.
"""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.conftest import DEVICE, ON_GPU, median_time, pick, sync
from coalm_kernels.flash_attn import flash_attention

try:
    from flash_attn import flash_attn_func
except ImportError:  # optional peer
    flash_attn_func = None

TOKENS = pick(512, 16384)
HQ, HKV, D = pick(4, 32), pick(2, 8), pick(64, 128)
DTYPE = pick(torch.float32, torch.bfloat16)
POINTS = [(t, True) for t in pick([128, 512], [1024, 4096, 8192, 16384])] + pick([(256, False)], [])
MODES = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


def _flops(B, T, causal, mode):
    return 4 * B * T * T * HQ * D * MODES[mode] * (0.5 if causal else 1.0)


def _timed(attn, q, k, v, mode):
    """A zero-argument callable that runs `mode` of attn(q, k, v) (backward reuses one stored forward graph)."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                attn(q, k, v)
        return run
    if mode == "bwd":
        o = attn(q, k, v)
        do = torch.randn_like(o)
        return lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
    do = torch.randn_like(q)
    return lambda: torch.autograd.grad(attn(q, k, v), (q, k, v), do)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("T,causal", POINTS, ids=[f"T{t}-{'causal' if c else 'full'}" for t, c in POINTS])
def test_flash_attention_tflops(benchmark, report, T, causal, mode):
    B = max(TOKENS // T, 1)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, h, D, generator=gen).to(DEVICE, DTYPE).requires_grad_() for h in (HQ, HKV, HKV))

    ours = _timed(lambda q, k, v: flash_attention(q, k, v, causal=causal), q, k, v, mode)

    def run():
        ours()
        sync()

    run()  # first call compiles and autotunes
    benchmark.pedantic(run, rounds=pick(3, 10), warmup_rounds=1)
    t = benchmark.stats.stats.median
    flops = _flops(B, T, causal, mode)

    # torch SDPA, flash backend, on the (B, H, T, D) views of the same memory, K/V expanded to Hq heads
    group = HQ // HKV
    kx, vx = (x.detach().repeat_interleave(group, dim=2).requires_grad_() for x in (k, v))

    def sdpa(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
        return out.transpose(1, 2)

    iters = pick(3, 10)
    peer_t = median_time(_timed(sdpa, q, kx, vx, mode), warmup=2, iters=iters)
    extra = {"tflops_sdpa_flash": flops / peer_t / 1e12, "B": B, "T": T, "causal": causal}
    if flash_attn_func is not None and ON_GPU:
        fa_t = median_time(_timed(lambda q, k, v: flash_attn_func(q, k, v, causal=causal), q, k, v, mode),
                           warmup=2, iters=iters)
        extra.update(flash_attn_median_s=fa_t, tflops_flash_attn=flops / fa_t / 1e12)
    report(f"flash_attn.{mode}[T={T},{'causal' if causal else 'full'},Hq={HQ},Hkv={HKV},D={D}]", t, "TFLOP/s",
           flops / t / 1e12, peer="torch sdpa flash", peer_time_s=peer_t, **extra)
