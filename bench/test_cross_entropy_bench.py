"""Fused linear cross-entropy against unfused `F.cross_entropy(h @ W.T)`: time and peak memory of fwd + bwd.

    pytest bench/test_cross_entropy_bench.py --benchmark-only

GPU: 4096 tokens, hidden 4096, vocab 128256 (Llama 3.1 8B's LM head), bf16, 10% of tokens ignored. Two
cases: the LM head frozen (LoRA / QLoRA fine-tuning: only d hidden is needed) and trainable. Peak memory is
torch.cuda.max_memory_allocated() during one fwd + bwd minus what was allocated before it (inputs and
weights), so it counts logits, softmax buffers and the gradients produced. Targets on an H100: fused peak
<= 1/8 of unfused at <= 1.1x its time.
CPU: small sizes in fp32, "fused" is the chunked plain-torch path CPU users run; time only, memory is not
measured on CPU (the rows carry peak_mb = None).
"""

import pytest
import torch
from conftest import DEVICE, ON_GPU, median_time, pick, sync

from coalm_kernels.cross_entropy import cross_entropy_ref, fused_linear_cross_entropy

TOKENS, HIDDEN, VOCAB = pick(512, 4096), pick(256, 4096), pick(8192, 128256)
DTYPE = pick(torch.float32, torch.bfloat16)


def _inputs(train_weight):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    hidden = torch.randn(TOKENS, HIDDEN, device=DEVICE, dtype=DTYPE, generator=g).requires_grad_()
    weight = (torch.randn(VOCAB, HIDDEN, device=DEVICE, dtype=DTYPE, generator=g) * HIDDEN**-0.5)
    weight.requires_grad_(train_weight)
    labels = torch.randint(0, VOCAB, (TOKENS,), device=DEVICE, generator=g)
    labels[::10] = -100
    return hidden, weight, labels


def _step(loss_fn, hidden, weight, labels):
    def run():
        hidden.grad = weight.grad = None
        loss_fn(hidden, weight, labels).backward()
        sync()
    return run


def _peak_mb(run):
    if not ON_GPU:
        return None
    run()  # warm up: kernels compiled, allocator settled
    hidden_bytes = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    return (torch.cuda.max_memory_allocated() - hidden_bytes) / 2**20


@pytest.mark.parametrize("train_weight", [False, True], ids=["frozen_head", "trained_head"])
def test_fused_linear_cross_entropy(benchmark, report, train_weight):
    hidden, weight, labels = _inputs(train_weight)
    fused = _step(fused_linear_cross_entropy, hidden, weight, labels)
    unfused = _step(cross_entropy_ref, hidden, weight, labels)
    peak_fused, peak_unfused = _peak_mb(fused), _peak_mb(unfused)
    benchmark.pedantic(fused, rounds=pick(5, 20), warmup_rounds=2)
    t = benchmark.stats.stats.median
    t_peer = median_time(unfused, warmup=2, iters=pick(5, 20))
    flops = 2 * TOKENS * HIDDEN * VOCAB * (3 if train_weight else 2)  # logits, d hidden (, d weight)
    report(f"fused_linear_ce.{'trained' if train_weight else 'frozen'}_head", t, "TFLOP/s", flops / t / 1e12,
           peer="F.cross_entropy(h @ W.T)", peer_time_s=t_peer, peak_mb=peak_fused, peer_peak_mb=peak_unfused,
           memory_ratio=(peak_fused / peak_unfused) if ON_GPU else None, dtype=str(DTYPE),
           shape=f"tokens={TOKENS} hidden={HIDDEN} vocab={VOCAB}")
