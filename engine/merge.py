"""Fold a LoRA adapter into its base model and save a plain HF checkpoint (config.json + safetensors).

    python -m engine.merge --adapter runs/demo/adapter --out merged/      # base read from adapter_config.json
    python -m engine.merge --model /path/to/Llama-3.1-8B --adapter DIR --out DIR --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def merge(adapter: str | Path, out: str | Path, model: str | None = None, dtype: str = "bf16") -> Path:
    from .loader import load, parse_dtype
    from .lora import merge_lora
    from .weights import save_hf

    cfg_path = Path(adapter) / "adapter_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{adapter} is not an adapter directory (no adapter_config.json)")
    base = model or json.loads(cfg_path.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{cfg_path} names no base model: pass --model")
    out_dtype = parse_dtype(dtype)
    m, _ = load(base, adapter=adapter, dtype=torch.float32, device="cpu")
    merge_lora(m)
    save_hf(m, out, dtype=out_dtype)
    return Path(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.merge", description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", required=True, help="PEFT LoRA adapter directory")
    p.add_argument("--out", required=True, help="output directory for the merged HF checkpoint")
    p.add_argument("--model", help="base model (preset, HF dir or .gguf); default: the adapter's base_model")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    a = p.parse_args(argv)
    try:
        out = merge(a.adapter, a.out, a.model, a.dtype)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"merged model saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
