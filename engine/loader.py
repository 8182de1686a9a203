"""`engine.load(source)`: a preset name, an HF checkpoint directory or a .gguf file -> (model, tokenizer)."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import get_config, resolve_name
from .model import build_model
from .tokenizer import load_gguf_tokenizer, load_tokenizer
from .weights import WeightsError, assign_state_dict, load_gguf, load_hf_state_dict, read_hf_config, smollm2_gguf_path

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_dtype(name: str) -> torch.dtype:
    """"bf16" | "fp16" | "fp32" (or torch's own names) -> torch dtype; anything else raises, listing the choices."""
    key = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(name, name)
    if key not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[key]


def default_dtype(device) -> torch.dtype:
    """bf16 on GPUs, fp32 on CPUs (where bf16 matmuls are slow and the reference paths run)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load(source: str | Path = "smollm2-135m", adapter: str | Path | None = None, dtype: torch.dtype | None = None,
         device: str | torch.device | None = None, random_init: bool = False, seed: int = 0):
    """Build the model on the meta device, then assign weights from `source` on `device`.

    source: a preset or alias (`smollm2-135m` is embedded; Llama presets need `random_init=True`, or a checkpoint
    directory), a directory with config.json + safetensors, or a .gguf file. adapter: a PEFT LoRA adapter directory.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or default_dtype(device)
    path = Path(str(source))
    if path.is_dir():
        args = read_hf_config(path)
        model = build_model(args)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        sd = load_hf_state_dict(path, expected, dtype=dtype)
        assign_state_dict(model, sd, str(path))
        if (path / "tokenizer.json").is_file() or (path / "original" / "tokenizer.model").is_file():
            tokenizer = load_tokenizer(path)
        else:  # a bare checkpoint: the family's own vocabulary
            tokenizer = load_tokenizer("llama3" if args.tokenizer == "llama3" else "smollm2-135m")
    elif path.suffix == ".gguf" or (resolve_name_or_none(str(source)) == "smollm2-135m" and not random_init):
        gguf_path = path if path.suffix == ".gguf" else smollm2_gguf_path()
        args, sd, reader = load_gguf(gguf_path, dtype=dtype)
        model = build_model(args)
        assign_state_dict(model, sd, str(gguf_path))
        tokenizer = load_gguf_tokenizer(gguf_path, reader)
    else:
        name = resolve_name(str(source))
        args = get_config(name)
        if not random_init:
            raise WeightsError(f"preset {name!r} has no embedded weights: pass a checkpoint directory "
                               f"(--checkpoint DIR with config.json + safetensors) or random_init=True")
        model = build_model(args)
        model.to_empty(device=device)
        model = model.to(dtype)
        if args.tie_embeddings:
            model.lm_head.weight = model.embed_tokens.weight
        model.init_weights(generator=torch.Generator(device=device).manual_seed(seed))
        tokenizer = load_tokenizer(name)
    model.init_buffers(device)
    model = model.to(device=device)
    if device.type == "cpu":
        column_major_linears(model)
    model.eval().requires_grad_(False)
    if adapter is not None:
        from .lora import load_adapter

        load_adapter(model, adapter)
    return model, tokenizer


@torch.no_grad()
def column_major_linears(model):
    """Store each linear weight (N, K) as the transpose of a contiguous (K, N) tensor: same values, shape and
    names, but F.linear's x @ W^T then reads memory in order. On CPU this made greedy decoding of SmolLM2 1.22x
    faster (bench/test_generate.py's setting, identical tokens) and LoRA training steps ~5% faster."""
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.weight.is_contiguous():
            m.weight.data = m.weight.data.t().contiguous().t()
    return model


def resolve_name_or_none(name: str) -> str | None:
    try:
        return resolve_name(name)
    except ValueError:
        return None
