"""Render + batch throughput of `engine.data` with the Llama 3 tokenizer, in rows per second.

    python -m pytest bench/test_data_bench.py --benchmark-only -q

Workload: the embedded sample's train rows (all four formats, ~230 Llama 3 tokens median), rendered with loss
masks (no render cache) and packed into one epoch of the trainer's micro-batches (`StepBatches.step`, global and
micro batch 8, max length 2048). Target: >= 2,000 rows/s on 2 CPU cores. Peer: the bare tokenizer encoding the
same prompt and output texts (the floor that rendering adds template work and packing on top of).
"""

from bench.conftest import median_time, require_package_files
from engine.data import StepBatches, load
from engine.data.render import messages
from engine.tokenizer import load_tokenizer

require_package_files("llama_models", "the Llama 3 tokenizer")


def test_render_batch_throughput(benchmark, report):
    tok = load_tokenizer("llama3")
    rows = load("sample")

    def run():
        sb = StepBatches.from_rows(rows, tok, 2048, global_batch_size=8, micro_batch_size=8)
        return [b for s in range(sb.steps_per_epoch) for b in sb.step(s)]

    batches = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    t = benchmark.stats.stats.median
    texts = [tok.apply_chat_template(messages(r), add_generation_prompt=True) for r in rows]

    def encode_only():
        for r, p in zip(rows, texts):
            tok.encode(p)
            tok.encode(r["output"])

    peer_t = median_time(encode_only, warmup=1, iters=5)
    assert sum(b.num_seqs for b in batches) == len(rows)
    report("data.render_batch[llama3]", t, "rows/s", len(rows) / t, peer="tiktoken encode only", peer_time_s=peer_t,
           tokens_per_s=sum(b.num_tokens for b in batches) / t)
