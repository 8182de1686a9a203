"""Fused QLoRA linear (NF4 base weight + rank-16 LoRA) in TFLOP/s, forward and forward+backward.

    python -m pytest bench/test_lora_matmul_bench.py --benchmark-only -q

Shape: the Llama 3.1 8B MLP up/gate projection over one 4096-token batch: x (4096, 4096) @ W^T, W (14336, 4096)
NF4 (blocksize 64, double-quantized), r = 16, bf16. CPU: 128 tokens, 256 -> 512, fp32, where our op is
`lora_linear_ref` (dequantize + torch matmuls, the engine's CPU path).

FLOPs: forward 2MNK + 2Mr(K + N); forward+backward (grads of x, A, B; W frozen) 4MNK + 6Mr(K + N).
Peers: the usual QLoRA path (bitsandbytes `dequantize_4bit`, then torch matmuls: x @ W^T + s (x @ A^T) @ B^T,
as PEFT runs it), and the floor, a plain bf16 matmul of the same shape with a dense W (forward: x @ W^T;
forward+backward: that plus the grad_x matmul). ratio = peer time / our time.
"""

import pytest
import torch

from bench.conftest import DEVICE, ON_GPU, bnb_dequantizer, median_time, pick, sync
from coalm_kernels.lora_matmul import lora_linear
from coalm_kernels.nf4 import quantize_nf4

M, K, N, R = pick((128, 256, 512, 16), (4096, 4096, 14336, 16))
DTYPE = pick(torch.float32, torch.bfloat16)
SCALE = 2.0


def _flops(mode):
    return (2 * M * N * K + 2 * M * R * (K + N)) if mode == "fwd" else (4 * M * N * K + 6 * M * R * (K + N))


def _step(layer, x, dy, mode):
    """A zero-argument callable running `mode` of layer(x) (grads of every input that requires one)."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                layer(x)
            sync()
        return run

    def run():
        y = layer(x)
        y.backward(dy)
        sync()
    return run


def _bnb_path(q, a, b):
    dequant, why = bnb_dequantizer(q, DTYPE)
    if dequant is None:
        return None, why

    def layer(x):
        return x @ dequant().T + SCALE * ((x @ a.T) @ b.T)
    return layer, None


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_qlora_linear_tflops(benchmark, report, mode):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(M, K, generator=g).to(DEVICE, DTYPE).requires_grad_(mode != "fwd")
    w = (torch.randn(N, K, generator=g) / K**0.5).to(DEVICE, DTYPE)
    a = (torch.randn(R, K, generator=g) / K**0.5).to(DEVICE, DTYPE).requires_grad_(mode != "fwd")
    b = (torch.randn(N, R, generator=g) * 0.01).to(DEVICE, DTYPE).requires_grad_(mode != "fwd")
    dy = torch.randn(M, N, generator=g).to(DEVICE, DTYPE)
    q = quantize_nf4(w)

    run = _step(lambda x: lora_linear(x, q, a, b, SCALE), x, dy, mode)
    run()  # compile and autotune
    benchmark.pedantic(run, rounds=pick(5, 10), warmup_rounds=1)
    t = benchmark.stats.stats.median
    flops = _flops(mode)
    name = f"qlora linear {mode} {M}x{K}->{N} r{R}" + ("" if ON_GPU else " (torch ref)")

    floor_flops = 2 * M * N * K * (1 if mode == "fwd" else 2)
    t_floor = median_time(_step(lambda x: x @ w.T, x, dy, mode))
    report(name, t, "TFLOP/s", flops / t / 1e12, peer=f"dense {str(DTYPE).removeprefix('torch.')} matmul (floor)",
           peer_time_s=t_floor, peer_tflops=floor_flops / t_floor / 1e12)

    layer, why = _bnb_path(q, a, b)
    if layer is None:
        print(f"\n  no bitsandbytes peer: {why}")
        return
    t_bnb = median_time(_step(layer, x, dy, mode))
    report(name, t, "TFLOP/s", flops / t / 1e12, peer="bnb dequantize_4bit + torch matmuls", peer_time_s=t_bnb,
           peer_tflops=flops / t_bnb / 1e12)
