"""Fold a LoRA adapter into its base model and export a self-contained model folder (and optionally a GGUF file).

    python -m engine.merge --adapter runs/demo/adapter --out merged/        # base read from adapter_config.json
    python -m engine.merge --model meta-llama/Llama-3.1-8B-Instruct --adapter DIR --out DIR --dtype bf16
    python -m engine.merge --adapter DIR --out merged/ --gguf merged/model-f16.gguf   # also a GGUF for llama.cpp

The folder holds config.json, safetensors, tokenizer.json, tokenizer_config.json (with the chat template),
special_tokens_map.json and generation_config.json: `vllm serve merged/`, `AutoModelForCausalLM.from_pretrained`
and llama.cpp's convert_hf_to_gguf.py take it as it is. --model accepts a preset, a path or a Hub id.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def merge(adapter: str | Path, out: str | Path, model: str | None = None, dtype: str = "bf16",
          overwrite: bool = False, gguf: str | Path | None = None) -> Path:
    from .export import export_hf, prepare_dir
    from .hub import resolve_source
    from .loader import load, parse_dtype
    from .lora import merge_lora

    cfg_path = Path(adapter) / "adapter_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{adapter} is not an adapter directory (no adapter_config.json)")
    try:
        base = model or json.loads(cfg_path.read_text()).get("base_model_name_or_path")
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e.msg})") from None
    if not base:
        raise ValueError(f"{cfg_path} names no base model: pass --model")
    out_dtype = parse_dtype(dtype)
    prepare_dir(out, overwrite)  # refuse before minutes of loading
    if gguf is not None and Path(gguf).exists() and not overwrite:
        raise ValueError(f"{gguf} exists: pass --overwrite to replace it")
    source = resolve_source(base)
    m, tok = load(source, adapter=adapter, dtype=torch.float32, device="cpu")
    merge_lora(m)
    export_hf(m, tok, out, dtype=out_dtype, source=source, overwrite=True)
    if gguf is not None:
        from .export_gguf import export_gguf

        export_gguf(m, tok, gguf, dtype=torch.float16 if out_dtype != torch.float32 else torch.float32)
    return Path(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.merge", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--adapter", required=True, help="PEFT LoRA adapter directory")
    p.add_argument("--out", required=True, help="output directory for the merged model (must be empty)")
    p.add_argument("--model", help="base model (preset, HF dir, .gguf or Hub id); default: the adapter's base model")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="dtype of the saved weights")
    p.add_argument("--gguf", default=None, help="also write a GGUF file (F16, or F32 with --dtype fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder (and --gguf file)")
    a = p.parse_args(argv)
    try:
        out = merge(a.adapter, a.out, a.model, a.dtype, overwrite=a.overwrite, gguf=a.gguf)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"merged model saved to {out}" + (f" and {a.gguf}" if a.gguf else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
