"""NF4 dequantization bandwidth (GB/s), against bitsandbytes' `dequantize_4bit` and a plain device copy.

    python -m pytest bench/test_nf4_bench.py --benchmark-only -q

Shape: one Llama 3.1 8B MLP weight, 14336 x 4096, blocksize 64, double-quantized, to bf16 (GPU); 1024 x 1024 to
fp32 on CPU, where our op is the plain-torch reference (the path the engine takes there).
Bytes moved per dequantization: read numel/2 (codes) + numel/64 (8-bit absmaxes) + 4 * numel/16384
(absmax2) and write numel * itemsize. The copy peer copies half that many bytes from one buffer to another, so
it moves the same total: ratio = copy time / our time is the fraction of copy bandwidth we reach (1 = roofline).
"""

import torch

from bench.conftest import DEVICE, ON_GPU, bnb_dequantizer, median_time, pick, sync
from coalm_kernels.nf4 import dequantize_nf4, quantize_nf4

ROWS, COLS = pick((1024, 1024), (14336, 4096))
DTYPE = pick(torch.float32, torch.bfloat16)


def test_nf4_dequant_bandwidth(benchmark, report):
    w = (torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(0)) * 0.02).to(DEVICE, DTYPE)
    q = quantize_nf4(w)
    n = w.numel()
    nbytes = n // 2 + n // 64 + 4 * (n // 64 // 256) + n * w.element_size()

    def run():
        dequantize_nf4(q, DTYPE)
        sync()

    run()  # compile
    benchmark.pedantic(run, rounds=pick(5, 20), warmup_rounds=2)
    t = benchmark.stats.stats.median
    name = f"nf4 dequant {ROWS}x{COLS} -> {str(DTYPE).removeprefix('torch.')}" + ("" if ON_GPU else " (torch ref)")

    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    t_copy = median_time(lambda: dst.copy_(src))
    report(name, t, "GB/s", nbytes / t / 1e9, peer="device copy of the same bytes", peer_time_s=t_copy)

    bnb_fn, why = bnb_dequantizer(q, DTYPE)
    if bnb_fn is None:
        print(f"\n  no bitsandbytes peer: {why}")
        return
    report(name, t, "GB/s", nbytes / t / 1e9, peer="bitsandbytes dequantize_4bit", peer_time_s=median_time(bnb_fn))
