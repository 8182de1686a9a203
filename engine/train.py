"""Fine-tune a Llama 3.x model with LoRA, QLoRA or full training on CoALM-IT rows.

    python -m engine.train                               # QLoRA on smollm2-135m with the embedded sample (CPU: minutes)
    python -m engine.train --qlora --model meta-llama/Llama-3.1-8B-Instruct --data coalm_it.parquet  # Hub id or dir
    python -m engine.train --config run.yaml --steps 200  # flags override the file
    python -m engine.train --out runs/x --resume         # continue from the last complete checkpoint (auto: or start)

Defaults are the CoALM recipe: LoRA rank 16, alpha 32 on all linear layers, lr 1e-4, linear warmup over 10% of the
steps then linear decay, AdamW (fused on CUDA) without weight decay, grad clip 1.0, 3 epochs, global batch 8, bf16 on
GPU (fp32 on CPU), loss on the assistant turn only, packed batches with varlen attention, fused cross-entropy.

A batch counts rows (examples), as the paper does: --global-batch-size rows make one optimizer step, and
--micro-batch-size of them go through the model at once, packed into one padding-free row whose attention never
crosses examples (varlen attention on cu_seqlens). Rows longer than --max-seq-len are cut from the left of the
prompt, never in the target.
Outputs in --out: adapter/ (PEFT format), metrics.jsonl, loss.png, config.yaml, checkpoints/step-N/ (each with a
PEFT adapter/), best.json with --val-frac/--val-data, tensorboard/ or wandb/ with --log; --full writes model/.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .checkpoint import find_resumable, list_checkpoints, load_checkpoint, save_checkpoint, save_final
from .data import DataError, StepBatches, cache_dir, load_train_val
from .loader import parse_dtype
from .metrics import (
    MetricsLogger,
    check_loggers,
    peak_memory_mb,
    plot_loss,
    truncate_metrics,
    update_best,
    validation_loss,
)
from .parallel.data_parallel import all_reduce_sum, clip_grad_norm, rank_device, reduce_gradients
from .parallel.dist import is_rank0, print0
from .parallel.fsdp import describe, shard_model, uses_fsdp
from .parallel.mesh import current_mesh, init_mesh
from .train_config import TrainConfig
from .train_config import parse_config as _parse_config

__all__ = ["TrainConfig", "TrainError", "main", "parse_config", "train"]


class TrainError(RuntimeError):
    """A failure the user must act on (bad loss, out of memory); printed as one line, exit 1."""


def parse_config(argv=None) -> TrainConfig:
    return _parse_config(argv, doc=__doc__)


# ---------------------------------------------------------------------------------------------------- the model
def load_model(cfg: TrainConfig, device, dtype):
    from .config import resolve_name
    from .hub import check_preset, resolve_source
    from .loader import load
    from .lora import apply_lora

    source = resolve_source(cfg.model)  # a Hub id -> its HF-cache snapshot (a missing one fails here, in one line)
    if cfg.size:
        check_preset(source, cfg.size)
    if not cfg.random_init and not Path(source).exists():
        name = resolve_name(source)
        if name != "smollm2-135m":
            raise ValueError(f"{name} needs weights: pass --model DIR (an HF checkpoint with config.json and "
                             f"safetensors) or a Hub id such as meta-llama/Llama-3.1-8B-Instruct (read from the HF "
                             f"cache), or --random-init for a throughput run without weights")
    # QLoRA on a GPU: load into host memory and quantize block by block on the way to the device, so the device
    # never holds the full bf16 model (70B QLoRA then fits one 80 GB GPU). FSDP2 likewise moves the blocks over
    # one by one as it shards them.
    fsdp = uses_fsdp(cfg.mode, current_mesh())
    stream = (cfg.mode == "qlora" or fsdp) and cfg.tp == 1 and device.type == "cuda"
    if cfg.tp > 1:
        model, tok = load(source, tp=cfg.tp, random_init=cfg.random_init, dtype=dtype, device=device, seed=cfg.seed)
    else:
        model, tok = load(source, dtype=dtype or (torch.bfloat16 if stream else None),
                          device="cpu" if stream else device, random_init=cfg.random_init, seed=cfg.seed)
    if cfg.mode == "full":
        model.requires_grad_(True)
    elif cfg.tp > 1:
        from .parallel.tp import apply_lora_parallel

        apply_lora_parallel(model, cfg.lora_rank, cfg.lora_alpha, dropout=cfg.lora_dropout,
                            quantize=cfg.mode == "qlora", seed=cfg.seed)
    else:
        torch.manual_seed(cfg.seed)  # LoRA A init
        apply_lora(model, cfg.lora_rank, cfg.lora_alpha, dropout=cfg.lora_dropout, quantize=cfg.mode == "qlora",
                   device=device if stream else None)
    model.gradient_checkpointing = cfg.activation_checkpointing
    if fsdp:  # parameters, gradients and (built from them next) AdamW's moments sharded over DP
        shard_model(model, current_mesh())
    return model.train(), tok


# ---------------------------------------------------------------------------------------------------- schedule
def lr_lambda(total_steps: int, warmup_ratio: float):
    warmup = max(1, math.ceil(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return f


# -------------------------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig) -> dict:
    mesh = init_mesh(cfg.tp)  # (dp, tp) from the world size; a world that --tp does not divide fails here, unloaded
    device = rank_device(cfg.device, mesh)
    dtype = None if cfg.dtype is None else parse_dtype(cfg.dtype)
    if device.type == "cuda" and dtype == torch.float32:
        raise ValueError("--dtype fp32 is not supported on a GPU: the Triton attention kernels take bf16 or fp16")
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.resume and list_checkpoints(out):
        raise ValueError(f"{out} already holds checkpoints: pass --resume to continue, or another --out")
    # checked before anything loads: a damaged newest checkpoint is skipped, none at all is an error (not --resume auto)
    resume_from = find_resumable(out, required=cfg.resume != "auto") if cfg.resume else None
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # rows first: a bad data file (or a missing logger package) fails before minutes of model loading
    rows, val_rows = load_train_val(cfg.data, cfg.val_data, cfg.val_frac, cfg.seed, cfg.skip_invalid, print0)
    check_loggers(cfg.log)
    model, tok = load_model(cfg, device, dtype)
    cache = None if cfg.no_render_cache else cache_dir()
    batches = StepBatches.from_rows(rows, tok, cfg.max_seq_len, cfg.global_batch_size, cfg.micro_batch_size,
                                    seed=cfg.seed, cache_dir=cache)
    print0(f"data: {batches.summary}")
    val = val_rows and StepBatches.from_rows(val_rows, tok, cfg.max_seq_len, cfg.micro_batch_size,
                                             cfg.micro_batch_size, cache_dir=cache)
    if val:
        print0(f"validation: {val.summary}")
    total = batches.total_steps(cfg.epochs, cfg.steps)
    eval_every = cfg.eval_every or cfg.save_every

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    n_train = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999),
                            fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, cfg.warmup_ratio))
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    if resume_from is not None:
        start = load_checkpoint(resume_from, model, opt, sched)
        print0(f"resumed from {resume_from} (step {start})")
    if is_rank0():
        import yaml

        (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    metrics_path = out / "metrics.jsonl"
    truncate_metrics(metrics_path, start)
    logger = MetricsLogger(out, cfg.log, asdict(cfg), resume=start > 0) if is_rank0() else None
    print0(f"training {n_train / 1e6:.2f}M parameters ({cfg.mode}{describe(model, mesh)}) for {total} steps on {device}")

    from tqdm import tqdm

    bar = tqdm(range(start, total), initial=start, total=total, disable=not is_rank0(), dynamic_ncols=True)
    last = {}
    fsdp = uses_fsdp(cfg.mode, mesh)
    for step in bar:
        t0 = time.perf_counter()
        # this DP rank's share of the step, each micro-batch weighted by its share of the whole step's targets;
        # under FSDP every forward all-gathers, so every rank runs as many (the extra ones weigh 0)
        loss_sum, tokens = 0.0, 0
        for mb in batches.step(step, mesh, pad=fsdp):
            b = mb.to(device)
            tokens += b.num_tokens if b.weight else 0
            try:
                loss = model.loss(input_ids=b.input_ids, labels=b.labels, position_ids=b.position_ids,
                                  cu_seqlens=b.cu_seqlens, max_seqlen=b.max_seqlen)
                # mean over every target token of the step, however they fall into micro-batches and ranks
                (loss * b.weight).backward()
            except torch.cuda.OutOfMemoryError as e:
                raise TrainError(
                    f"CUDA out of memory at micro-batch size {cfg.micro_batch_size} x max sequence length "
                    f"{cfg.max_seq_len}: add --activation-checkpointing or lower --micro-batch-size/--max-seq-len"
                ) from e
            loss_sum += loss.item() * b.weight
        loss_sum, tokens = all_reduce_sum([loss_sum, tokens], mesh, device)
        if not math.isfinite(loss_sum):
            ckpts = list_checkpoints(out)
            where = f"the last good checkpoint is {ckpts[-1]}" if ckpts else "no checkpoint had been written yet"
            raise TrainError(f"loss became {loss_sum} at step {step + 1}; stopping ({where}). Try a lower --lr.")
        if not fsdp:  # FSDP2 has reduce-scattered them already (the same SUM)
            reduce_gradients(params, mesh)  # DP: sum of the replicas' partial token means = the step's token mean
        gnorm = clip_grad_norm(named, cfg.grad_clip, mesh)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        last = {"step": step + 1, "loss": loss_sum, "lr": sched.get_last_lr()[0], "grad_norm": float(gnorm),
                "tokens_per_s": tokens / dt, "peak_memory_mb": peak_memory_mb(device),
                "epoch": (step + 1) / batches.steps_per_epoch}
        if logger:
            logger.log(last)
        if val and ((step + 1) % eval_every == 0 or step + 1 == total):
            with torch.no_grad():  # (every rank runs all of it: under FSDP2 each forward is a collective)
                last["val_loss"] = validation_loss(model, val.all_batches(), device)
            if logger:
                logger.log({"step": step + 1, "val_loss": last["val_loss"]})
                if update_best(out, step + 1, last["val_loss"]):
                    print0(f"\nstep {step + 1}: validation loss {last['val_loss']:.4f} (best so far)")
        bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{last['lr']:.2e}", tok_s=f"{last['tokens_per_s']:.0f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == total:
            save_checkpoint(out, step + 1, model, opt, sched, cfg)
    bar.close()
    save_final(model, tok, cfg, out)
    if logger:
        logger.close()
        plot_loss(metrics_path, out / "loss.png")
    return last


def main(argv=None) -> int:
    try:
        cfg = parse_config(argv)
        last = train(cfg)
    except (ValueError, FileNotFoundError, DataError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if not isinstance(e, TrainError) else 1
    except KeyboardInterrupt:
        print("interrupted: the last complete checkpoint can be continued with --resume", file=sys.stderr)
        return 130
    if last:
        print0(f"done: step {last['step']}, loss {last['loss']:.4f}, {last['tokens_per_s']:.0f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
