"""LoRA and QLoRA linear layers, PEFT-compatible adapters, and merging.

    y = x @ W^T + (alpha / r) * (x @ A^T) @ B^T        W frozen (dense, or NF4 for QLoRA); A (r, in), B (out, r)

A starts Kaiming-uniform and B at zero (as PEFT does), so a fresh adapter leaves the model unchanged. The forward is
`coalm_kernels.lora_matmul.lora_linear`, which fuses the base matmul, the NF4 dequantization and the low-rank term on
GPUs. Adapters are saved as PEFT writes them (`adapter_config.json` + `adapter_model.safetensors` with names like
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), so `peft.PeftModel.from_pretrained` loads them
onto the transformers model, and ours load PEFT's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from coalm_kernels.lora_matmul import lora_linear
from coalm_kernels.nf4 import NF4Weight, dequantize_nf4, quantize_nf4

from .model import parse_peft_lora_name, peft_lora_name

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


class LoRALinear(nn.Module):
    """A frozen linear layer (dense `weight`, or `nf4` for QLoRA) plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, quantize: bool = False):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.dropout = dropout
        w = base.weight.detach()
        if quantize:
            self.nf4: NF4Weight | None = quantize_nf4(w)
            self.weight = None
        else:
            self.nf4 = None
            self.weight = nn.Parameter(w, requires_grad=False)
        # LoRA factors in fp32 on CPU (also over a bf16 base: mixed precision, the low-rank term in fp32), in the base
        # dtype on GPU (bf16 there, the fused kernels' one dtype); the optimizer keeps fp32 state either way
        dtype = torch.float32 if w.device.type == "cpu" else w.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def base_weight(self, dtype=None) -> torch.Tensor:
        return dequantize_nf4(self.nf4, dtype) if self.nf4 is not None else self.weight

    def forward(self, x):
        w = self.nf4 if self.nf4 is not None else self.weight
        if self.dropout and self.training:  # dropout applies to the low-rank path only, so it cannot be fused
            base = F.linear(x, self.base_weight(x.dtype))
            low = F.linear(F.linear(F.dropout(x, self.dropout).to(self.lora_A.dtype), self.lora_A), self.lora_B)
            return base + (self.scale * low).to(base.dtype)
        return lora_linear(x, w, self.lora_A, self.lora_B, self.scale)

    def _apply(self, fn, recurse=True):  # keep the NF4 tensors on the module's device through .to()/.cuda()
        super()._apply(fn, recurse)
        if self.nf4 is not None:
            probe = fn(torch.empty(0, device=self.nf4.packed.device))
            self.nf4 = self.nf4.to(probe.device)
        return self

    @torch.no_grad()
    def merged_weight(self, dtype=torch.float32) -> torch.Tensor:
        w = self.base_weight(dtype).to(dtype)
        return w + self.scale * (self.lora_B.to(dtype) @ self.lora_A.to(dtype))

    def extra_repr(self):
        kind = "nf4" if self.nf4 is not None else str(self.weight.dtype).removeprefix("torch.")
        return f"in={self.in_features}, out={self.out_features}, r={self.rank}, alpha={self.alpha}, base={kind}"


def lora_modules(model) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model, rank: int = 16, alpha: float = 32, targets=None, dropout: float = 0.0,
               quantize: bool = False, device=None):
    """Replace the targeted nn.Linear layers (default: all seven per block) with LoRALinear; freeze everything else.

    device: move the model there one block at a time, replacing (and, for QLoRA, quantizing) each block's layers
    as it arrives, so that a model loaded into host memory never has its full-precision weights on the device at
    once: the device holds the NF4 blocks done so far plus one full-precision block.
    """
    targets = tuple(targets or ALL_LINEAR)
    unknown = set(targets) - set(ALL_LINEAR)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)}; valid: {', '.join(ALL_LINEAR)}")
    model.requires_grad_(False)
    blocks = list(model.layers)  # every target lives in a block; one block at a time also paces the progress bar
    from tqdm import tqdm

    from .parallel.dist import is_rank0

    for block in tqdm(blocks, desc="quantizing to NF4", unit="block", leave=False,
                      disable=not quantize or not is_rank0()):
        if device is not None:
            block.to(device)
        for module in list(block.modules()):
            for child_name, child in list(module.named_children()):
                if child_name in targets and isinstance(child, nn.Linear):
                    setattr(module, child_name, LoRALinear(child, rank, alpha, dropout, quantize))
    if device is not None:
        model.to(device)  # embeddings, norms, the output layer and buffers
    model.lora_config = {"r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": list(targets)}
    return model


def lora_state_dict(model) -> dict[str, torch.Tensor]:
    """LoRA factors under PEFT's names (no adapter name, as PEFT saves them)."""
    out = {}
    for name, m in lora_modules(model).items():
        out[peft_lora_name(name, "lora_A")] = m.lora_A.detach()
        out[peft_lora_name(name, "lora_B")] = m.lora_B.detach()
    return out


def adapter_config(model, base_model: str | None = None) -> dict:
    cfg = getattr(model, "lora_config", None)
    if cfg is None:
        raise ValueError("the model has no LoRA layers (apply_lora first)")
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": cfg["r"], "lora_alpha": cfg["lora_alpha"], "lora_dropout": cfg["lora_dropout"],
        "target_modules": sorted(cfg["target_modules"]), "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None, "use_rslora": False,
        "use_dora": False, "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
        "alpha_pattern": {},
    }


def save_adapter(model, directory: str | Path, base_model: str | None = None, state: dict | None = None) -> Path:
    """Write adapter_config.json + adapter_model.safetensors (fp32 factors on CPU are saved as they are)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = lora_state_dict(model) if state is None else state
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(d / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    (d / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(model, base_model), indent=1))
    return d


def read_adapter_config(directory: str | Path) -> dict:
    """adapter_config.json, validated: a one-line ValueError naming the file and the field for anything the loader
    cannot use (generate, serve, eval and merge call this before loading a model)."""
    cfg_path = Path(directory) / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{directory} is not an adapter directory (no {ADAPTER_CONFIG})")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")  # noqa: TRY004 (callers catch ValueError: one line)

    def bad(field, expected):
        return ValueError(f"{cfg_path}: {field}: {cfg.get(field)!r} is not {expected}")

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{cfg_path}: only LoRA adapters are supported, got peft_type={cfg.get('peft_type')!r}")
    r = cfg.get("r", 8)  # PEFT's default rank
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise bad("r", "a positive integer")
    if not number(cfg.get("lora_alpha", 8)):
        raise bad("lora_alpha", "a number")
    dropout = cfg.get("lora_dropout", 0.0)
    if not number(dropout) or not 0 <= dropout < 1:
        raise bad("lora_dropout", "a number in [0, 1)")
    t = cfg.get("target_modules")
    if t is not None and not isinstance(t, str) and not (isinstance(t, list) and all(isinstance(x, str) for x in t)):
        raise bad("target_modules", "a list of module names or 'all-linear'")
    base = cfg.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise bad("base_model_name_or_path", "a string")
    for key in ("use_dora", "use_rslora", "rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise ValueError(f"{cfg_path}: {key}: DoRA, rsLoRA and per-module rank/alpha patterns are not supported")
    return {**cfg, "r": r, "lora_alpha": cfg.get("lora_alpha", 8)}


def read_adapter(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    cfg = read_adapter_config(directory)
    w_path = Path(directory) / ADAPTER_WEIGHTS
    if not w_path.is_file():
        raise FileNotFoundError(f"adapter directory {directory} has no {ADAPTER_WEIGHTS}")
    try:
        weights = load_file(str(w_path))
    except Exception as e:
        raise ValueError(f"cannot read {w_path}: {e}") from e
    _targets_from_config(cfg)
    return cfg, weights


def _targets_from_config(cfg) -> list[str]:
    t = cfg.get("target_modules") or list(ALL_LINEAR)
    if isinstance(t, str):  # PEFT allows "all-linear" or a regex; "all-linear" is the only string we accept
        if t != "all-linear":
            raise ValueError(f"{ADAPTER_CONFIG}: target_modules: {t!r} is not supported (use a list, or 'all-linear')")
        t = list(ALL_LINEAR)
    return t


def load_adapter(model, directory: str | Path, quantize: bool = False, shard=None):
    """Apply the adapter in `directory` (PEFT format) to `model`, adding LoRA layers if it has none.

    shard: the loader's per-tensor hook (`engine.parallel.tp.TPShard` on a tensor-parallel rank): called as
    shard(our parameter name, full tensor), it returns this rank's part."""
    cfg, weights = read_adapter(directory)
    if not lora_modules(model):
        apply_lora(model, cfg["r"], cfg["lora_alpha"], _targets_from_config(cfg), quantize=quantize)
    mods = lora_modules(model)
    seen = set()
    for key, t in weights.items():
        parsed = parse_peft_lora_name(key)
        if parsed is None:
            raise ValueError(f"{directory}: unexpected adapter tensor {key}")
        name, part = parsed
        if name not in mods:
            raise ValueError(f"{directory}: adapter tensor {key} targets no LoRA layer of this model")
        p, full = getattr(mods[name], part), tuple(t.shape)
        if shard is not None:
            t = shard(f"{name}.{part}", t)
        if p.shape != t.shape:
            raise ValueError(f"{directory}: adapter tensor {key} has shape {full}, the model expects "
                             f"{tuple(p.shape)}{' on each tensor-parallel rank' if shard is not None else ''}")
        with torch.no_grad():
            p.copy_(t.to(p.dtype))
        seen.add((name, part))
    missing = sorted({n for n in mods for part in ("lora_A", "lora_B") if (n, part) not in seen})
    if missing:
        raise ValueError(f"{directory}: adapter has no weights for {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    return model


@torch.no_grad()
def merge_lora(model, dtype=None):
    """Fold every LoRA update into a plain nn.Linear (W + s * B @ A); NF4 bases are dequantized first."""
    from tqdm import tqdm

    for name, module in tqdm(list(model.named_modules()), desc="merging LoRA", leave=False):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                out_dtype = dtype or (child.weight.dtype if child.weight is not None else child.nf4.dtype)
                lin = nn.Linear(child.in_features, child.out_features, bias=False, device=child.lora_A.device,
                                dtype=out_dtype)
                lin.weight.copy_(child.merged_weight(torch.float32).to(out_dtype))
                lin.requires_grad_(False)
                setattr(module, child_name, lin)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model
