"""`make agent` (= `python -m coalm.agent`): build the recipe, fine-tune with LoRA, print the base-vs-tuned scorecard.

Steps, each skipped when its output is already complete for the same configuration (so an interrupted run
continues where it stopped, and a changed recipe or flag is never silently ignored):
1. `<out>/data/agent-<hash>.jsonl` from `coalm.agent.recipe.build` (seeded, decontaminated); the hash is of the
   recipe's configuration (source weights, seed, synthetic rows, row length cap, data root);
2. `python -m engine.train --lora` in a subprocess into `<out>/train` (continued with --resume from its last
   checkpoint), flags from TRAIN_ARGS plus anything given after `--`. `<out>/train/agent-run.json` records the hash
   of the data and the whole training command: the adapter is reused (and it says so) only when they match; a
   changed recipe or flag moves the old run aside (`<out>/train.<old hash>`, never deleted) and trains again;
3. `python -m coalm.eval --suite coalm` with the base model and the adapter, in the CoALM-IT prompt style and the
   official one, into `<out>/scorecard-<style>/` (the suite caches per-item outputs, so it resumes too). The CoALM-IT
   style also scores each model under grammar-constrained decoding (`--constrained on`, the default), a column beside
   the free one.

The default length is sized for two CPU cores (about 75 minutes of training); `--steps` changes it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from coalm.paths import data_root
from engine.data.rows import save_rows

from .recipe import build, parse_weights

STAMP = "agent-run.json"

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
    p.add_argument("--constrained", default="on", choices=["on", "off"],
                   help="on: the CoALM-IT style scorecard also scores every model under grammar-constrained decoding "
                        "(engine.structured), a constrained column beside the free one")


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
    if style == "coalm" and a.constrained == "on":  # the grammar-constrained column beside the free one
        cmd += ["--constrained", "on"]
    if a.data_root:
        cmd += ["--data-root", a.data_root]
    return cmd


def config_hash(config) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def recipe_config(a) -> dict:
    """What the recipe's rows depend on."""
    return {"weights": parse_weights(a.weights), "seed": a.seed, "synth_rows": a.synth_rows,
            "max_chars": a.max_chars, "data_root": str(data_root(a.data_root).resolve())}


def train_config(cmd: list[str]) -> list[str]:
    """What the adapter depends on: the training command (its data file is named by the recipe's hash), without
    the interpreter's path and --resume."""
    return [x for x in cmd[1:] if x != "--resume"]


def prepare_train_dir(train_dir: Path, key: str, config) -> str:
    """Make `train_dir` hold the run of `key`: reuse it when its stamp matches, else move it aside (never delete) and
    stamp an empty one. Returns "reuse", "resume" (same config, unfinished) or "train"."""
    stamp = train_dir / STAMP
    old = json.loads(stamp.read_text()).get("key") if stamp.is_file() else None
    if train_dir.is_dir() and any(train_dir.iterdir()) and old != key:
        aside = train_dir.with_name(f"{train_dir.name}.{old or 'unstamped'}")
        n = 1
        while aside.exists():
            aside, n = train_dir.with_name(f"{train_dir.name}.{old or 'unstamped'}-{n}"), n + 1
        train_dir.rename(aside)
        print(f"recipe or training config changed (hash {old or 'none'} -> {key}): the previous run is kept at "
              f"{aside}; training again", flush=True)
    if (train_dir / "adapter" / "adapter_config.json").is_file():
        print(f"reusing {train_dir / 'adapter'}: same recipe and training config (hash {key})", flush=True)
        return "reuse"
    train_dir.mkdir(parents=True, exist_ok=True)
    resume = (train_dir / "checkpoints").is_dir()
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "config": config}, indent=1))
    tmp.replace(stamp)
    return "resume" if resume else "train"


def run(a, extra: list[str]) -> int:
    extra = [x for x in extra if x != "--"]
    out = Path(a.out)
    t0 = time.time()
    recipe = recipe_config(a)
    data = out / "data" / f"agent-{config_hash(recipe)}.jsonl"
    if data.is_file():
        print(f"reusing {data}: same recipe (hash {config_hash(recipe)})", flush=True)
    else:
        train, _, stats = build(recipe["data_root"], recipe["weights"], seed=a.seed, n_synth=a.synth_rows,
                                max_chars=a.max_chars)
        save_rows(train, data)
        print(f"recipe: {len(train)} rows -> {data}; formats {stats['formats']}", flush=True)
    train_dir = out / "train"
    adapter = train_dir / "adapter"
    if a.skip_train:
        if not (adapter / "adapter_config.json").is_file():
            raise ValueError(f"no adapter at {adapter}: run without --skip-train first")
        print(f"--skip-train: scoring {adapter} as it is", flush=True)
    else:
        cmd = train_command(a, data, train_dir, extra)
        config = train_config(cmd)
        if prepare_train_dir(train_dir, config_hash(config), config) != "reuse":
            _run(train_command(a, data, train_dir, extra))  # again: --resume follows what is in train_dir now
        if not (adapter / "adapter_config.json").is_file():
            raise ValueError(f"training finished without an adapter at {adapter}")
    t_train = time.time() - t0
    for style in [s.strip() for s in a.styles.split(",") if s.strip()]:
        _run(suite_command(a, style, adapter, out / f"scorecard-{style}"))
    for style in [s.strip() for s in a.styles.split(",") if s.strip()]:
        table = out / f"scorecard-{style}" / "scorecard.md"
        print(f"\n## prompt style: {style}\n\n{table.read_text()}")
    print(f"\nrecipe + training: {t_train / 60:.0f} min; total: {(time.time() - t0) / 60:.0f} min; run folder: {out}")
    return 0
