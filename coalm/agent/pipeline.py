"""`make agent` (= `python -m coalm.agent`): build the recipe, fine-tune with LoRA, print the base-vs-tuned scorecard.

Steps, each skipped when its output is already complete (so an interrupted run continues where it stopped):
1. `<out>/data/agent.jsonl` from `coalm.agent.recipe.build` (seeded, decontaminated);
2. `python -m engine.train --lora` in a subprocess into `<out>/train` (continued with --resume from its last
   checkpoint), flags from TRAIN_ARGS plus anything given after `--`;
3. `python -m coalm.eval --suite coalm` with the base model and the adapter, in the CoALM-IT prompt style and the
   official one, into `<out>/scorecard-<style>/` (the suite caches per-item outputs, so it resumes too).

The default length is sized for two CPU cores (about 75 minutes of training); `--steps` changes it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from engine.data.rows import save_rows

# LoRA on all linear layers (engine.train's defaults: rank 16, alpha 32), a higher rate than the 8B recipe's 1e-4
# because a 135M model with a few hundred steps needs it (the demo's experience), rows cut at 1024 tokens.
TRAIN_STEPS = 260
TRAIN_ARGS = ["--lora", "--lr", "4e-4", "--max-seq-len", "1024", "--global-batch-size", "8", "--micro-batch-size",
              "4", "--save-every", "25", "--keep-last", "1"]
# The scorecard sizes the issue asks for (per benchmark), all from the data root.
SUITE_LIMITS = ["--bfcl-limit", "50", "--apibank-limit", "60", "--multiwoz-dialogues", "40"]


def add_arguments(p) -> None:
    p.add_argument("--out", default="runs/agent", help="run folder (data, train, scorecards)")
    p.add_argument("--model", default="smollm2-135m", help="model to fine-tune and score")
    p.add_argument("--steps", type=int, default=TRAIN_STEPS, help="optimizer steps (8 rows each)")
    p.add_argument("--styles", default="coalm,official", help="prompt styles to score, comma-separated")
    p.add_argument("--skip-train", action="store_true", help="score an adapter already in <out>/train/adapter")


def _run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd)
    if rc != 0:
        raise RuntimeError(f"step failed with exit code {rc}: {' '.join(cmd)}")


def native_bf16() -> bool:
    """Whether to train with --dtype bf16: where the hardware multiplies bf16 natively (AVX512-BF16/AMX CPUs: the
    frozen base in bf16, the LoRA factors and their updates in fp32; ~3x the fp32 matmul rate there). Elsewhere
    engine.train's default (fp32 on other CPUs, bf16 on GPUs)."""
    import torch

    from engine import inference_dtype

    return inference_dtype() == torch.bfloat16


def train_command(a, data: Path, train_dir: Path, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "engine.train", *TRAIN_ARGS, "--model", a.model, "--data", str(data),
           "--out", str(train_dir), "--steps", str(a.steps), "--seed", str(a.seed)]
    if "--dtype" not in extra and native_bf16():
        cmd += ["--dtype", "bf16"]
    cmd += extra
    if (train_dir / "checkpoints").is_dir():
        cmd.append("--resume")
    return cmd


def suite_command(a, style: str, adapter: Path, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "coalm.eval", "--suite", "coalm", "--model", a.model, "--adapter", str(adapter),
           "--prompt-style", style, "--out", str(out), *SUITE_LIMITS]
    if a.data_root:
        cmd += ["--data-root", a.data_root]
    return cmd


def run(a, extra: list[str]) -> int:
    from .__main__ import data_root, parse_weights
    from .recipe import build

    extra = [x for x in extra if x != "--"]
    out = Path(a.out)
    data = out / "data" / "agent.jsonl"
    t0 = time.time()
    if not data.is_file():
        train, _, stats = build(data_root(a.data_root), parse_weights(a.weights), seed=a.seed, n_synth=a.synth_rows,
                                max_chars=a.max_chars)
        save_rows(train, data)
        print(f"recipe: {len(train)} rows -> {data}; formats {stats['formats']}", flush=True)
    train_dir = out / "train"
    adapter = train_dir / "adapter"
    if not a.skip_train and not (adapter / "adapter_config.json").is_file():
        _run(train_command(a, data, train_dir, extra))
    if not (adapter / "adapter_config.json").is_file():
        raise ValueError(f"no adapter at {adapter}: run without --skip-train first")
    t_train = time.time() - t0
    for style in [s.strip() for s in a.styles.split(",") if s.strip()]:
        _run(suite_command(a, style, adapter, out / f"scorecard-{style}"))
    for style in [s.strip() for s in a.styles.split(",") if s.strip()]:
        table = out / f"scorecard-{style}" / "scorecard.md"
        print(f"\n## prompt style: {style}\n\n{table.read_text()}")
    print(f"\nrecipe + training: {t_train / 60:.0f} min; total: {(time.time() - t0) / 60:.0f} min; run folder: {out}")
    return 0
