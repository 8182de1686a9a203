"""Fine-tune a Llama 3.x model with LoRA, QLoRA or full training on CoALM-IT rows.

    python -m engine.train                               # QLoRA on smollm2-135m with the embedded sample (CPU: minutes)
    python -m engine.train --size 8b --qlora --checkpoint /path/to/Llama-3.1-8B-Instruct --data coalm_it.parquet
    python -m engine.train --config run.yaml --steps 200  # flags override the file
    python -m engine.train --out runs/x --resume         # continue from the last complete checkpoint

Defaults are the CoALM recipe: LoRA rank 16, alpha 32 on all linear layers, lr 1e-4, linear warmup over 10% of the
steps then linear decay, AdamW (fused on CUDA) without weight decay, grad clip 1.0, 3 epochs, global batch 8, bf16 on
GPU (fp32 on CPU), loss on the assistant turn only, packed batches with varlen attention, fused cross-entropy.

A batch counts rows (examples), as the paper does: --global-batch-size rows make one optimizer step, and
--micro-batch-size of them go through the model at once, packed into one padding-free row whose attention never
crosses examples (varlen attention on cu_seqlens). Rows longer than --max-seq-len are cut from the left of the
prompt, never in the target.
Outputs in --out: adapter/ (PEFT format), metrics.jsonl, loss.png, config.yaml, checkpoints/step-N/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .dist import is_rank0, print0, rank, world_size
from .loader import parse_dtype


@dataclass
class TrainConfig:
    model: str = "smollm2-135m"  # preset, alias (--size), HF checkpoint dir or .gguf
    checkpoint: str | None = None  # weights for a Llama preset (HF dir)
    mode: str = "qlora"  # qlora | lora | full
    data: list[str] = field(default_factory=lambda: ["sample"])  # "sample" or .jsonl/.parquet files
    epochs: float = 3.0
    steps: int | None = None  # overrides epochs
    max_seq_len: int = 1024
    micro_batch_size: int = 8  # rows per forward pass (packed)
    global_batch_size: int = 8  # rows per optimizer step
    lr: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    activation_checkpointing: bool = False
    dtype: str | None = None  # bf16 on CUDA, fp32 on CPU
    device: str | None = None
    out: str = "runs/default"
    resume: bool = False
    random_init: bool = False
    save_every: int = 50
    keep_last: int = 2
    seed: int = 0
    skip_invalid: bool = False
    tp: int = 1

    def __post_init__(self):
        if self.mode not in ("qlora", "lora", "full"):
            raise ValueError(f"mode must be qlora, lora or full, got {self.mode!r}")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"--global-batch-size {self.global_batch_size} must be a multiple of "
                             f"--micro-batch-size {self.micro_batch_size}")
        for name in ("max_seq_len", "micro_batch_size", "global_batch_size", "save_every", "keep_last", "lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.tp > 1 and self.mode == "full":
            raise ValueError("--full with --tp > 1 is not supported yet (saving would need gathered weights); "
                             "use --lora or --qlora")
        if isinstance(self.data, str):
            self.data = [self.data]


class TrainError(RuntimeError):
    """A failure the user must act on (bad loss, out of memory); printed as one line, exit 1."""


# ------------------------------------------------------------------------------------------------ configuration
def parse_config(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m engine.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="YAML file of TrainConfig keys; flags override it")
    p.add_argument("--size", dest="model", help="8b | 70b | 405b (alias of --model)")
    mode = p.add_mutually_exclusive_group()
    for m in ("qlora", "lora", "full"):
        mode.add_argument(f"--{m}", dest="mode", action="store_const", const=m)
    for f in fields(TrainConfig):
        if f.name == "mode":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, dest=f.name, action="store_true")
        elif f.name == "data":
            p.add_argument(flag, dest=f.name, nargs="+")
        else:
            conv = {"int": int, "float": float, "int | None": int}.get(f.type, str)
            p.add_argument(flag, dest=f.name, type=conv)
    given = vars(p.parse_args(argv))
    values = {}
    if "config" in given:
        import yaml

        path = given.pop("config")
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"cannot read config {path}: {e}") from e
        valid = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(loaded) - valid)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; valid keys: {sorted(valid)}")
        values.update(loaded)
    values.update(given)
    return TrainConfig(**values)


# ---------------------------------------------------------------------------------------------------- the model
def load_model(cfg: TrainConfig, device, dtype):
    from .config import resolve_name
    from .loader import load
    from .lora import apply_lora

    source = cfg.checkpoint or cfg.model
    if not cfg.checkpoint and not cfg.random_init and not Path(cfg.model).exists():
        name = resolve_name(cfg.model)
        if name != "smollm2-135m":
            raise ValueError(f"{name} needs weights: pass --checkpoint DIR (an HF checkpoint with config.json and "
                             f"safetensors, e.g. meta-llama/Llama-3.1-8B-Instruct downloaded with huggingface-cli) "
                             f"or --random-init for a throughput run without weights")
    # QLoRA on a GPU: load into host memory and quantize block by block on the way to the device, so the device
    # never holds the full bf16 model (70B QLoRA then fits one 80 GB GPU).
    stream = cfg.mode == "qlora" and cfg.tp == 1 and device.type == "cuda"
    if cfg.tp > 1:
        from .parallel import load_parallel

        model, tok = load_parallel(source, cfg.tp, random_init=cfg.random_init, dtype=dtype)
    else:
        model, tok = load(source, dtype=dtype or (torch.bfloat16 if stream else None),
                          device="cpu" if stream else device, random_init=cfg.random_init, seed=cfg.seed)
    if cfg.mode == "full":
        model.requires_grad_(True)
    elif cfg.tp > 1:
        from .parallel import apply_lora_parallel

        apply_lora_parallel(model, cfg.lora_rank, cfg.lora_alpha, dropout=cfg.lora_dropout,
                            quantize=cfg.mode == "qlora", seed=cfg.seed)
    else:
        torch.manual_seed(cfg.seed)  # LoRA A init
        apply_lora(model, cfg.lora_rank, cfg.lora_alpha, dropout=cfg.lora_dropout, quantize=cfg.mode == "qlora",
                   device=device if stream else None)
    model.gradient_checkpointing = cfg.activation_checkpointing
    return model.train(), tok


def trainable_state(model) -> dict[str, torch.Tensor]:
    """This rank's trainable parameters by our module names (under tensor parallelism, its own shards)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------------------- checkpoints
def _checkpoints(out: Path) -> list[Path]:
    d = out / "checkpoints"
    done = [p for p in d.glob("step-*") if not p.name.endswith(".tmp") and (p / "state-rank0.pt").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _barrier():
    if world_size() > 1:
        torch.distributed.barrier()


def save_checkpoint(out: Path, step: int, model, opt, sched, keep_last: int):
    """Every rank writes its own shard into step-N.tmp, then rank 0 renames it to step-N: a run killed mid-write
    leaves the previous checkpoint intact (an unrenamed .tmp is ignored and overwritten)."""
    from safetensors.torch import save_file

    final = out / "checkpoints" / f"step-{step}"
    tmp = final.with_name(final.name + ".tmp")
    if is_rank0():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    r = rank()
    save_file(trainable_state(model), str(tmp / f"trainable-rank{r}.safetensors"))
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng},
               tmp / f"state-rank{r}.pt")
    _barrier()
    if is_rank0():
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _checkpoints(out)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(path: Path, model, opt, sched) -> int:
    from safetensors.torch import load_file

    r = rank()
    saved = load_file(str(path / f"trainable-rank{r}.safetensors"))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != set(params):
        raise ValueError(f"{path} does not match this run's trainable parameters (different mode, rank or model?)")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n])
    state = torch.load(path / f"state-rank{r}.pt", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    py = state["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"])


# ---------------------------------------------------------------------------------------------------- schedule
def lr_lambda(total_steps: int, warmup_ratio: float):
    warmup = max(1, math.ceil(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return f


def step_rows(n_rows: int, step: int, cfg: TrainConfig, steps_per_epoch: int) -> list[list[int]]:
    """Row indices of each micro-batch of optimizer step `step`: a seeded order per epoch, so that a resumed run
    sees exactly the data the uninterrupted one would."""
    epoch, k = divmod(step, steps_per_epoch)
    order = list(range(n_rows))
    random.Random(cfg.seed * 100003 + epoch).shuffle(order)
    chosen = order[k * cfg.global_batch_size:(k + 1) * cfg.global_batch_size]
    return [chosen[i:i + cfg.micro_batch_size] for i in range(0, len(chosen), cfg.micro_batch_size)]


def n_targets(rendered, index: list[int]) -> int:
    """Tokens that carry loss (after the shift each row's own target tokens; its first token is never one)."""
    return sum(sum(t != -100 for t in rendered[i][1]) for i in index)


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -------------------------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig) -> dict:
    from coalm import data as cdata
    from coalm.data.pack import make_batch

    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = None if cfg.dtype is None else parse_dtype(cfg.dtype)
    if device.type == "cuda" and dtype == torch.float32:
        raise ValueError("--dtype fp32 is not supported on a GPU: the Triton attention kernels take bf16 or fp16")
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.resume and _checkpoints(out):
        raise ValueError(f"{out} already holds checkpoints: pass --resume to continue, or another --out")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    rows = []  # rows first: a bad data file fails before minutes of model loading
    for spec in cfg.data:
        report: dict = {}
        rows += cdata.load(spec, skip_invalid=cfg.skip_invalid, report=report)
        if report.get("skipped"):
            print0(f"{spec}: skipped {report['skipped']} invalid rows: {report.get('reasons', {})}")
    if not rows:
        raise ValueError(f"no valid training rows in {', '.join(cfg.data)}")
    model, tok = load_model(cfg, device, dtype)
    rendered, rstats = cdata.render_rows(rows, tok, max_len=cfg.max_seq_len)
    if not rendered:
        raise ValueError("no training rows left after rendering (all targets longer than --max-seq-len?)")
    n_tok = sum(len(x) for x, _ in rendered)
    print0(f"data: {len(rows)} rows, {n_tok} tokens ({rstats.truncated} truncated, {rstats.dropped} dropped: "
           f"target longer than --max-seq-len {cfg.max_seq_len})")
    steps_per_epoch = math.ceil(len(rendered) / cfg.global_batch_size)
    total = cfg.steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))

    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999),
                            fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, cfg.warmup_ratio))
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    if cfg.resume:
        ckpts = _checkpoints(out)
        if ckpts:
            start = load_checkpoint(ckpts[-1], model, opt, sched)
            print0(f"resumed from {ckpts[-1]} (step {start})")
        else:
            print0(f"--resume: no complete checkpoint in {out}/checkpoints, starting from scratch")
    if is_rank0():
        import yaml

        (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    metrics_path = out / "metrics.jsonl"
    _truncate_metrics(metrics_path, start)
    print0(f"training {n_train / 1e6:.2f}M parameters ({cfg.mode}) for {total} steps on {device}")

    from tqdm import tqdm

    bar = tqdm(range(start, total), initial=start, total=total, disable=not is_rank0(), dynamic_ncols=True)
    last = {}
    for step in bar:
        t0 = time.perf_counter()
        micro = step_rows(len(rendered), step, cfg, steps_per_epoch)
        counts = [n_targets(rendered, idx) for idx in micro]
        total_targets = max(1, sum(counts))
        loss_sum, tokens = 0.0, 0
        for idx, count in zip(micro, counts):
            b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in make_batch(rendered, idx).items()}
            tokens += b["input_ids"].numel()
            try:
                loss = model.loss(b["input_ids"], b["labels"], b["position_ids"], b["cu_seqlens"], b["max_seqlen"])
                # mean over every target token of the step, however they fall into micro-batches
                (loss * (count / total_targets)).backward()
            except torch.cuda.OutOfMemoryError as e:
                raise TrainError(
                    f"CUDA out of memory at micro-batch size {cfg.micro_batch_size} x max sequence length "
                    f"{cfg.max_seq_len}: add --activation-checkpointing or lower --micro-batch-size/--max-seq-len"
                ) from e
            loss_sum += loss.item() * count / total_targets
        if not math.isfinite(loss_sum):
            ckpts = _checkpoints(out)
            where = f"the last good checkpoint is {ckpts[-1]}" if ckpts else "no checkpoint had been written yet"
            raise TrainError(f"loss became {loss_sum} at step {step + 1}; stopping ({where}). Try a lower --lr.")
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        last = {"step": step + 1, "loss": loss_sum, "lr": sched.get_last_lr()[0], "grad_norm": float(gnorm),
                "tokens_per_s": tokens / dt, "peak_memory_mb": peak_memory_mb(device),
                "epoch": (step + 1) / steps_per_epoch}
        if is_rank0():
            with open(metrics_path, "a") as f:
                f.write(json.dumps(last) + "\n")
        bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{last['lr']:.2e}", tok_s=f"{last['tokens_per_s']:.0f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == total:
            save_checkpoint(out, step + 1, model, opt, sched, cfg.keep_last)
    bar.close()
    finish(model, cfg, out)
    return last


def _truncate_metrics(path: Path, step: int):
    """On resume, drop log lines past the checkpoint, so metrics.jsonl reads as one uninterrupted run."""
    if not path.is_file():
        return
    kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in kept))


def finish(model, cfg: TrainConfig, out: Path):
    if cfg.tp > 1:
        from .parallel import save_adapter_parallel

        tmp = out / "adapter.tmp"
        save_adapter_parallel(model, tmp, base_model=cfg.checkpoint or cfg.model)  # a collective: every rank
        if is_rank0():
            shutil.rmtree(out / "adapter", ignore_errors=True)
            os.replace(tmp, out / "adapter")
            plot_loss(out / "metrics.jsonl", out / "loss.png")
        return
    if not is_rank0():
        return
    if cfg.mode == "full":
        from .weights import save_hf

        save_hf(model, out / "model", dtype=next(model.parameters()).dtype)
        print0(f"model saved to {out / 'model'}")
    else:
        from .lora import save_adapter

        tmp = out / "adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_adapter(model, tmp, base_model=cfg.checkpoint or cfg.model)
        shutil.rmtree(out / "adapter", ignore_errors=True)
        os.replace(tmp, out / "adapter")
        print0(f"adapter saved to {out / 'adapter'}")
    plot_loss(out / "metrics.jsonl", out / "loss.png")


def plot_loss(metrics: Path, png: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    if not recs:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in recs], [r["loss"] for r in recs])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    from coalm.data import DataError

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
