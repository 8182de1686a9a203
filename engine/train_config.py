"""The training configuration: `TrainConfig` (every default lives here) and its parsing from a YAML file and flags.

    cfg = parse_config(["--config", "run.yaml", "--steps", "200"])   # flags override the file
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path


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


def parse_config(argv=None, doc: str = "") -> TrainConfig:
    """Flags (and a --config YAML file under them) -> TrainConfig. `doc` is the entry point's docstring (help)."""
    head, _, rest = (doc or "").partition("\n\n")
    p = argparse.ArgumentParser(prog="python -m engine.train", description=head,
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=rest,
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
