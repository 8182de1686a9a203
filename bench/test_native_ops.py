"""The compiled NF4 ops on CPU against bitsandbytes, one thread per side, in the same run.

    python -m pytest bench/test_native_ops.py --benchmark-only -q -s

- dequantization (`coalm_kernels.native.nf4_dequantize`, what `coalm_kernels.nf4.dequantize_nf4` runs on CPU) of SmolLM2's
  MLP weight (1536 x 576) and of a Llama 3.2 1B MLP weight (8192 x 2048), blocksize 64, double-quantized, to fp32,
  against bitsandbytes `dequantize_4bit` and a plain copy of the same bytes (bench/test_nf4_bench.py's accounting);
- the QLoRA linear (`coalm_kernels.lora_matmul.lora_linear`, NF4 base + rank-16 LoRA, fp32) forward and forward+backward
  over 512 tokens of SmolLM2's MLP shape, against bitsandbytes dequantize + torch matmuls (PEFT's QLoRA path);
- nf4_linear at decode sizes (M = 1, 8) against bitsandbytes dequantize + matmul and against torch's fp32 matmul on
  the dense weight.
ratio = peer time / our time (> 1: ours faster). Threads: $COALM_BENCH_THREADS (default 1).
"""

from __future__ import annotations

import os

import pytest
import torch

from bench.conftest import ON_GPU, bnb_dequantizer, median_time
from coalm_kernels import native
from coalm_kernels.lora_matmul import lora_linear
from coalm_kernels.nf4 import quantize_nf4

if ON_GPU:
    pytest.skip("CPU benchmark of the native ops", allow_module_level=True)

THREADS = int(os.environ.get("COALM_BENCH_THREADS", "1"))
M, K, N, R = 512, 576, 1536, 16
SCALE = 2.0


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    with torch._dynamo.config.patch(disable=True):  # bitsandbytes' eager path, as PEFT runs it
        yield
    torch.set_num_threads(old)


def _weight(n, k):
    return quantize_nf4(torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)) * 0.02)


@pytest.mark.parametrize("shape", [(1536, 576), (8192, 2048)])
def test_native_dequant(benchmark, report, shape):
    q = _weight(*shape)
    n = q.numel()
    nbytes = n // 2 + n // 64 + 4 * (n // 64 // 256) + 4 * n
    benchmark.pedantic(lambda: native.nf4_dequantize(q, torch.float32), rounds=20, warmup_rounds=2)
    t = benchmark.stats.stats.median
    name = f"native nf4_dequantize {shape[0]}x{shape[1]} -> fp32 ({native.isa()}, {THREADS}T)"
    src = torch.ones(nbytes // 2, dtype=torch.uint8)
    dst = torch.empty_like(src)
    report(name, t, "GB/s", nbytes / t / 1e9, peer="copy of the same bytes", peer_time_s=median_time(lambda: dst.copy_(src)))
    bnb_fn, why = bnb_dequantizer(q, torch.float32)
    if bnb_fn is None:
        pytest.skip(f"no bitsandbytes peer: {why}")
    report(name, t, "GB/s", nbytes / t / 1e9, peer="bitsandbytes dequantize_4bit", peer_time_s=median_time(bnb_fn))


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_native_qlora_linear(benchmark, report, mode):
    g = torch.Generator().manual_seed(0)
    q = _weight(N, K)
    x = torch.randn(M, K, generator=g).requires_grad_(mode != "fwd")
    a = (torch.randn(R, K, generator=g) * 0.05).requires_grad_()
    b = (torch.randn(N, R, generator=g) * 0.05).requires_grad_()
    dy = torch.randn(M, N, generator=g)
    dequant, why = bnb_dequantizer(q, torch.float32)
    if dequant is None:
        pytest.skip(f"no bitsandbytes peer: {why}")

    def run(layer):
        if mode == "fwd":
            def fwd():
                with torch.no_grad():
                    layer(x)
            return fwd

        def fwd_bwd():
            layer(x).backward(dy)
        return fwd_bwd

    class _BnbBase(torch.autograd.Function):  # what PEFT + bitsandbytes do: dequantize in forward and in backward
        @staticmethod
        def forward(ctx, x):
            return x @ dequant().T

        @staticmethod
        def backward(ctx, dy):
            return dy @ dequant()

    ours = run(lambda x: lora_linear(x, q, a, b, SCALE))
    theirs = run(lambda x: _BnbBase.apply(x) + SCALE * ((x @ a.T) @ b.T))
    benchmark.pedantic(ours, rounds=10, warmup_rounds=2)
    t = benchmark.stats.stats.median
    flops = (2 * M * N * K + 2 * M * R * (K + N)) * (1 if mode == "fwd" else 2)
    report(f"qlora linear {mode} M={M} {K}->{N} r={R} fp32 ({THREADS}T)", t, "GFLOP/s", flops / t / 1e9,
           peer="bitsandbytes dequantize_4bit + torch matmuls", peer_time_s=median_time(theirs, warmup=2, iters=10))


@pytest.mark.parametrize("m", [1, 8])
def test_native_nf4_linear_decode(benchmark, report, m):
    q = _weight(N, K)
    w = native.nf4_dequantize(q, torch.float32)
    x = torch.randn(m, K)
    benchmark.pedantic(lambda: native.nf4_linear(x, q), rounds=50, warmup_rounds=5)
    t = benchmark.stats.stats.median
    name = f"nf4_linear M={m} {K}->{N} ({native.isa()}, {THREADS}T)"
    bnb_fn, _ = bnb_dequantizer(q, torch.float32)
    if bnb_fn is not None:
        report(name, t, "Gweights/s", N * K / t / 1e9, peer="bitsandbytes dequantize_4bit + matmul",
               peer_time_s=median_time(lambda: x @ bnb_fn().T, warmup=2, iters=20))
    report(name, t, "Gweights/s", N * K / t / 1e9, peer="torch fp32 matmul (dense weight)",
           peer_time_s=median_time(lambda: x @ w.T, warmup=5, iters=50))
