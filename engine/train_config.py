"""The training configuration: `TrainConfig` (every default and its one-line help live here) and its parsing from a
YAML file and flags, both converted to the field types and validated before anything is loaded or written.

    cfg = parse_config(["--config", "run.yaml", "--steps", "200"])   # flags override the file

Hand-written rather than tyro/jsonargparse: the converter below is ~40 lines over the dataclass's own annotations,
it keeps the CLI's flag names and its one-line errors (`run.yaml: lr: 'fast' is not a float`), and adds no dependency.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import yaml


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    model: str | None = _f(None, "preset (smollm2-135m, llama-3.1-8b, ...), HF checkpoint dir, .gguf, or Hub id "
                                    "org/name[@revision] (from the HF cache); default: --size, else smollm2-135m")
    size: str | None = _f(None, "architecture preset or alias (8b, 70b, 405b): with --random-init the model; "
                                "with --model weights, the shape they must have")
    mode: str = _f("qlora", "qlora | lora | full", choices=("qlora", "lora", "full"))
    data: list[str] = field(default_factory=lambda: ["sample"],
                            metadata={"help": "training rows: 'sample' (embedded) or .jsonl / .parquet files"})
    val_data: str | None = _f(None, "validation rows (.jsonl / .parquet); or use --val-frac")
    val_frac: float = _f(0.0, "hold out this fraction of the training rows for validation loss")
    eval_every: int | None = _f(None, "validation loss every N steps (default: at every checkpoint)")
    epochs: float = _f(3.0, "passes over the data (ignored when --steps is given)")
    steps: int | None = _f(None, "optimizer steps (overrides --epochs)")
    max_seq_len: int = _f(1024, "tokens per row; longer prompts are cut from the left, never the target")
    micro_batch_size: int = _f(8, "rows per forward pass, packed into one padding-free row")
    global_batch_size: int = _f(8, "rows per optimizer step (a multiple of --micro-batch-size)")
    lr: float = _f(1e-4, "peak learning rate")
    warmup_ratio: float = _f(0.1, "linear warmup over this fraction of the steps, then linear decay")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    grad_clip: float = _f(1.0, "gradient norm clip")
    lora_rank: int = _f(16, "LoRA rank")
    lora_alpha: float = _f(32.0, "LoRA alpha (scale alpha / rank)")
    lora_dropout: float = _f(0.0, "LoRA dropout")
    activation_checkpointing: bool = _f(False, "recompute activations in the backward pass (less memory)")
    dtype: str | None = _f(None, "bf16 | fp16 | fp32 (default: bf16 on CUDA, fp32 on CPU)")
    device: str | None = _f(None, "cpu, cuda or cuda:N (default: cuda when available)")
    out: str = _f("runs/default", "output directory")
    resume: str | None = _f(None, "continue from the newest complete checkpoint in --out (an error when there is "
                                  "none); --resume auto: start from scratch when there is none",
                            choices=("latest", "auto"), const="latest")
    random_init: bool = _f(False, "random weights (throughput and memory runs)")
    save_every: int = _f(50, "checkpoint every N steps")
    keep_last: int = _f(2, "checkpoints kept")
    seed: int = _f(0, "seed of the data order, LoRA init and dropout")
    skip_invalid: bool = _f(False, "skip (and count) invalid data rows instead of failing")
    log: list[str] = field(default_factory=list, metadata={
        "help": "extra metric loggers: tensorboard, wandb (offline); metrics.jsonl is always written",
        "choices": ("tensorboard", "wandb")})
    no_render_cache: bool = _f(False, "render the rows again instead of reusing the on-disk token cache")
    tp: int = _f(1, "tensor-parallel degree (under torchrun)")

    def __post_init__(self):
        for f in fields(self):  # also when built in code: the same conversion and messages as the CLI
            setattr(self, f.name, convert(f, getattr(self, f.name), f"--{f.name.replace('_', '-')}"))
        if self.model is None:
            self.model = self.size or "smollm2-135m"
        validate(self)


def _base(f) -> tuple[str, bool]:
    t = f.type.replace(" ", "")
    return t.replace("|None", ""), t.endswith("|None")


def convert(f, value, where: str):
    """`value` (from YAML, a flag's text, or code) -> the field's type; a ValueError naming `where` otherwise."""
    kind, optional = _base(f)
    if value is None and optional:
        return None

    def bad(expected):
        return ValueError(f"{where}: {value!r} is not {expected}")

    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if "const" in f.metadata and isinstance(value, bool):  # an optional-value flag: `resume: true` in YAML
        return f.metadata["const"] if value else None
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad("an integer" if kind == "int" else "a number")
        try:
            out = int(value) if kind == "int" else float(value)
        except ValueError:
            raise bad("an integer" if kind == "int" else "a float") from None
        if kind == "int" and isinstance(value, float) and value != out:
            raise bad("an integer")
        return out
    if kind == "list[str]":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items and f.name == "data" or not all(isinstance(x, str) for x in items):
            raise bad("a list of strings" if f.name != "data" else "a file name or a list of file names")
        bad_choice = [x for x in items if "choices" in f.metadata and x not in f.metadata["choices"]]
        if bad_choice:
            raise ValueError(f"{where}: {bad_choice[0]!r} is not one of {', '.join(f.metadata['choices'])}")
        return list(items)
    if not isinstance(value, str):
        raise bad("a string")
    if "choices" in f.metadata and value not in f.metadata["choices"]:
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(f.metadata['choices'])}")
    return value


def validate(cfg: TrainConfig):
    """Checks that need no model or data; run before anything is read or written."""
    for name in ("max_seq_len", "micro_batch_size", "global_batch_size", "save_every", "keep_last", "lora_rank",
                 "tp", "steps", "eval_every"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    for name in ("epochs", "lr"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"--{name} must be > 0, got {getattr(cfg, name)}")
    for name in ("warmup_ratio", "val_frac", "lora_dropout"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.global_batch_size % cfg.micro_batch_size:
        raise ValueError(f"--global-batch-size {cfg.global_batch_size} must be a multiple of "
                         f"--micro-batch-size {cfg.micro_batch_size}")
    if cfg.val_data and cfg.val_frac:
        raise ValueError("give --val-data or --val-frac, not both")
    if cfg.tp > 1 and "WORLD_SIZE" not in os.environ:
        raise ValueError(f"--tp {cfg.tp} needs one process per rank: launch with "
                         f"`torchrun --nproc-per-node {cfg.tp} -m engine.train ...`")
    if cfg.dtype is not None:
        from .loader import parse_dtype

        parse_dtype(cfg.dtype)
    if cfg.device is not None:
        import torch

        try:
            dev = torch.device(cfg.device)
        except RuntimeError:
            raise ValueError(f"--device: {cfg.device!r} is not a device (cpu, cuda, cuda:N)") from None
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"--device: {cfg.device!r} is not supported (cpu, cuda, cuda:N)")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {cfg.device}: no CUDA device is available")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise ValueError(f"--out {cfg.out} is a file, not a directory")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):  # argparse's ArgumentDefaultsHelpFormatter, with our defaults (SUPPRESSed)
        return action.help


def parse_config(argv=None, doc: str = "") -> TrainConfig:
    """Flags (and a --config YAML file under them) -> TrainConfig. `doc` is the entry point's docstring (help)."""
    head, _, rest = (doc or "").partition("\n\n")
    p = argparse.ArgumentParser(prog="python -m engine.train", description=head, formatter_class=_Formatter,
                                epilog=rest, argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="YAML file of TrainConfig keys (snake_case); flags override it")
    mode = p.add_mutually_exclusive_group()
    for m in ("qlora", "lora", "full"):
        mode.add_argument(f"--{m}", dest="mode", action="store_const", const=m, help=f"same as --mode {m}")
    p.add_argument("--checkpoint", dest="_checkpoint", metavar="DIR", help=argparse.SUPPRESS)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default is MISSING else f.default
        text = f.metadata["help"] + ("" if "default" in f.metadata["help"] else f" (default: {default})")
        kind, _ = _base(f)
        if kind == "bool":
            p.add_argument(flag, dest=f.name, action="store_true", help=f.metadata["help"])
        elif "const" in f.metadata:
            p.add_argument(flag, dest=f.name, nargs="?", const=f.metadata["const"], metavar="|".join(
                f.metadata["choices"][1:]), help=f.metadata["help"])
        elif kind == "list[str]":
            p.add_argument(flag, dest=f.name, nargs="+", metavar=f.name.upper(), help=text)
        else:
            p.add_argument(flag, dest=f.name, metavar=kind.upper(), help=text)
    given = vars(p.parse_args(argv))
    if "_checkpoint" in given:
        raise ValueError("--checkpoint was folded into --model: pass the weights as --model DIR (or a Hub id), "
                         "and --size PRESET to check them against a preset")
    values = {}
    if "config" in given:
        path = given.pop("config")
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:  # PyYAML's message spans several lines: the problem and where, in one
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = " ".join(str(getattr(e, "problem", None) or e).split())
            raise ValueError(f"{path}: invalid YAML: {problem}{where}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read config {path}: {e}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of TrainConfig keys, got {type(loaded).__name__}")
        by_name = {f.name: f for f in fields(TrainConfig)}
        unknown = sorted(map(str, set(loaded) - set(by_name)))
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; valid keys: {sorted(by_name)}")
        values.update({k: convert(by_name[k], v, f"{path}: {k}") for k, v in loaded.items()})
    by_name = {f.name: f for f in fields(TrainConfig)}
    values.update({k: convert(by_name[k], v, "--" + k.replace("_", "-")) for k, v in given.items()})
    return TrainConfig(**values)
