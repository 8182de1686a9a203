"""Fold a LoRA adapter into its base model and export a self-contained model folder (and optionally a GGUF file).

    python -m engine.merge --adapter runs/demo/adapter --out merged/        # base read from adapter_config.json
    python -m engine.merge --model meta-llama/Llama-3.1-8B-Instruct --adapter DIR --out DIR --dtype bf16
    python -m engine.merge --adapter DIR --out merged/ --gguf merged/model-f16.gguf   # also a GGUF for llama.cpp

The folder holds config.json, safetensors, tokenizer.json, tokenizer_config.json (with the chat template),
special_tokens_map.json and generation_config.json: `vllm serve merged/`, `AutoModelForCausalLM.from_pretrained`
and llama.cpp's convert_hf_to_gguf.py take it as it is. --model accepts a preset, a path or a Hub id.

Nothing the user owns is lost: --out (or --gguf) equal to, inside or containing the adapter or the base model is
refused whatever --overwrite says; every check (paths, writability, the adapter config, GGUF support) runs before
the model loads or anything is written; the outputs are written under hidden sibling names and renamed into place
when complete, so an interrupted merge leaves the previous --out (or nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch


def merge(adapter: str | Path, out: str | Path, model: str | None = None, dtype: str = "bf16",
          overwrite: bool = False, gguf: str | Path | None = None) -> Path:
    from .atomic import OutputError, ensure_writable, guard_out, staged_dir, staged_file
    from .export import weights_bytes, write_hf
    from .hub import resolve_source
    from .loader import load, parse_dtype
    from .lora import merge_lora, read_adapter_config

    base = model or read_adapter_config(adapter).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{Path(adapter) / 'adapter_config.json'} names no base model: pass --model")
    out_dtype = parse_dtype(dtype)
    out, gguf = Path(out).expanduser(), None if gguf is None else Path(gguf).expanduser()
    guard_out(out, [adapter, base], overwrite)  # refuse before minutes of loading (or a download)
    inside = gguf is not None and out.resolve() in gguf.resolve().parents  # written into the staged folder
    if gguf is not None:
        if gguf.resolve() == out.resolve():
            raise OutputError(f"--gguf {gguf} is the --out folder: give a file name")
        guard_out(gguf, [adapter, base], overwrite or inside, kind="file")
    source = resolve_source(base)
    guard_out(out, [source], overwrite)
    if gguf is not None:
        guard_out(gguf, [source], overwrite or inside, kind="file")
    m, tok = load(source, adapter=adapter, dtype=torch.float32, device="cpu")
    gguf_dtype = torch.float16 if out_dtype != torch.float32 else torch.float32
    if gguf is not None:
        from .export_gguf import check_tokenizer, export_gguf

        check_tokenizer(tok)  # a refused --gguf leaves no --out behind
    merge_lora(m)
    need = weights_bytes(m, out_dtype) + (weights_bytes(m, gguf_dtype) if gguf is not None else 0)
    ensure_writable(out.parent, need)
    with staged_dir(out, overwrite) as d, \
            (staged_file(gguf, overwrite) if gguf is not None and not inside else contextlib.nullcontext()) as g:
        write_hf(m, tok, d, dtype=out_dtype, source=source)
        if gguf is not None:
            target = d / gguf.resolve().relative_to(out.resolve()) if inside else g
            target.parent.mkdir(parents=True, exist_ok=True)
            export_gguf(m, tok, target, dtype=gguf_dtype)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.merge", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--adapter", required=True, help="PEFT LoRA adapter directory")
    p.add_argument("--out", required=True, help="output directory for the merged model (must be empty)")
    p.add_argument("--model", help="base model (preset, HF dir, .gguf or Hub id); default: the adapter's base model")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="dtype of the saved weights")
    p.add_argument("--gguf", default=None, help="also write a GGUF file (F16, or F32 with --dtype fp32)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out folder (and --gguf file), once the new one is complete")
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
