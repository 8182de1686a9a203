"""Training metrics: the JSONL log (always; repaired on resume), optional TensorBoard and Weights & Biases (offline)
loggers, the validation loss, peak memory, and the loss plot (train and validation curves).

metrics.jsonl holds one record per optimizer step (`step`, `loss`, `lr`, ...) and one per validation
(`step`, `val_loss`). TensorBoard and wandb are optional extras (`pip install 'coalm-engine[tensorboard]'`,
`[wandb]`); asking for one that is not installed fails with a one-line hint before training starts.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "plot": "matplotlib"}


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_metrics(path: Path) -> list[dict]:
    """The records of metrics.jsonl; a torn line (a crash mid-write leaves one) is dropped, not an error."""
    if not path.is_file():
        return []
    recs = []
    for ln in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            recs.append(rec)
    return recs


def truncate_metrics(path: Path, step: int):
    """On resume, keep the records up to the checkpoint's step (dropping torn lines), so metrics.jsonl reads as one
    uninterrupted run."""
    if path.is_file():
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def _missing(extra: str, what: str) -> ValueError:
    return ValueError(f"{what} needs the optional `{EXTRAS[extra]}` package: pip install 'coalm-engine[{extra}]'")


def check_loggers(kinds: list[str]):
    """Fail before training when a requested logger's package is missing."""
    import importlib.util

    for k in kinds:
        if importlib.util.find_spec(EXTRAS[k]) is None:
            raise _missing(k, f"--log {k}")


class MetricsLogger:
    """Writes each record to metrics.jsonl and to the requested loggers (rank 0 only: the caller checks)."""

    def __init__(self, out: Path, kinds: list[str], config: dict | None = None, resume: bool = False):
        self.path = out / "metrics.jsonl"
        self.tb = self.wandb = None
        if "tensorboard" in kinds:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(out / "tensorboard"))
        if "wandb" in kinds:
            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")  # no account or network needed; `wandb sync` uploads
            self.wandb = wandb.init(project="coalm-engine", dir=str(out), config=config or {},
                                    name=out.name, mode=os.environ["WANDB_MODE"], resume="allow" if resume else None)

    def log(self, rec: dict):
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        scalars = {k: v for k, v in rec.items() if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(("val/" if k.startswith("val_") else "train/") + k, v, rec["step"])
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=rec["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


@torch.no_grad()
def validation_loss(model, batches, device) -> float:
    """Mean loss over every target token of the validation rows, through the same packed path as training."""
    was_training = model.training
    model.eval()  # no dropout: the value depends on the weights alone (and no RNG is drawn)
    total, count = 0.0, 0
    for b in batches:  # engine.data.Batch
        n = b.n_targets
        if n:
            t = b.to(device)
            loss = model.loss(input_ids=t.input_ids, labels=t.labels, position_ids=t.position_ids,
                              cu_seqlens=t.cu_seqlens, max_seqlen=t.max_seqlen)
            total += loss.item() * n
            count += n
    model.train(was_training)
    return total / max(count, 1)


def update_best(out: Path, step: int, val_loss: float) -> bool:
    """Record the lowest validation loss in out/best.json ({"step", "val_loss", "checkpoint"}); True when new."""
    path = out / "best.json"
    best = json.loads(path.read_text()) if path.is_file() else None
    if best is not None and best["val_loss"] <= val_loss:
        return False
    ckpt = out / "checkpoints" / f"step-{step}"
    path.write_text(json.dumps({"step": step, "val_loss": val_loss, "checkpoint": str(ckpt)}, indent=1))
    return True


def plot_loss(metrics: Path, png: Path) -> bool:
    """loss.png with the training and validation curves; False (and a hint) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print(f"(no {png.name}: {_missing('plot', 'the loss plot')})")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(metrics)
    train = [(r["step"], r["loss"]) for r in recs if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
    if not train:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*train), label="train")
    if val:
        ax.plot(*zip(*val), marker="o", label="validation")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True
