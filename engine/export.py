"""Self-contained exports: a folder that transformers, vLLM and llama.cpp's converter load as it is.

    export_hf(model, tok, "merged/", dtype=torch.bfloat16, source="/path/to/base")   # merge and --full use this

Next to the safetensors (`weights.save_hf`) it writes the tokenizer (`tokenizer.json`, `tokenizer_config.json` with
the chat template and special tokens, `special_tokens_map.json`) and `generation_config.json` (stop tokens). Files
the source checkpoint has are copied as they are (its own template, generation defaults); the rest is written from
the loaded tokenizer. An export never goes into a non-empty folder unless `overwrite` is given, and it is written
into a hidden sibling folder renamed into place when complete (`engine.atomic`): a killed export leaves the previous
folder or nothing, never a half folder that loads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .atomic import OutputError, ensure_writable, guard_out, staged_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
ExportError = OutputError  # the name callers and tests know


def weights_bytes(model, dtype) -> int:
    """The size of the saved weights (what the disk must hold, plus a little for tokenizer and configs)."""
    item = torch.empty((), dtype=dtype).element_size()
    return sum(p.numel() for p in model.parameters()) * item + (64 << 20)


def export_hf(model, tok, out, dtype=torch.bfloat16, source=None, overwrite: bool = False) -> Path:
    """Write the self-contained folder `out` (refused when it is, holds or lies inside `source`)."""
    guard_out(out, [_source_dir(source)], overwrite)
    _check_tokenizer(tok, source)
    ensure_writable(Path(out).expanduser().parent, weights_bytes(model, dtype))
    with staged_dir(out, overwrite) as d:
        write_hf(model, tok, d, dtype, source)
    return Path(out)


def write_hf(model, tok, d: Path, dtype=torch.bfloat16, source=None):
    """The folder's files into the existing (staging) folder `d`."""
    from .weights import save_hf

    save_hf(model, d, dtype=dtype)
    write_tokenizer(tok, d, source, max_len=model.args.max_seq_len)
    write_generation_config(tok, d, source)


def _check_tokenizer(tok, source):
    src = _source_dir(source)
    if (src is None or not (src / "tokenizer.json").is_file()) and not hasattr(getattr(tok, "_backend", None), "save"):
        raise ExportError("this tokenizer (the Llama 3 tiktoken file) cannot be written as tokenizer.json: export "
                          "from a checkpoint that has tokenizer.json (pass the base model's HF folder or Hub id)")


def _source_dir(source) -> Path | None:
    return Path(source) if source is not None and Path(str(source)).is_dir() else None


def write_tokenizer(tok, d: Path, source=None, max_len: int | None = None):
    src = _source_dir(source)
    if src is not None and (src / "tokenizer.json").is_file():
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, d / name)
        cfg_path = d / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        if "chat_template" not in cfg and not (d / "chat_template.jinja").is_file():
            cfg["chat_template"] = tok.chat_template  # a base model without one: the engine's built-in template
            cfg_path.write_text(json.dumps(cfg, indent=1, ensure_ascii=False))
        return
    backend = getattr(tok, "_backend", None)
    if not hasattr(backend, "save"):
        raise ExportError("this tokenizer (the Llama 3 tiktoken file) cannot be written as tokenizer.json: export "
                          "from a checkpoint that has tokenizer.json (pass the base model's HF folder or Hub id)")
    backend.save(str(d / "tokenizer.json"))
    inv = {v: k for k, v in tok.special.items()}
    pad = inv.get(tok.pad_id)
    special = {"bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": pad}
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": tok.chat_template,
        "clean_up_tokenization_spaces": False, "model_max_length": max_len or 131072,
        "added_tokens_decoder": {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                          "normalized": False, "single_word": False}
                                 for t, i in sorted(tok.special.items(), key=lambda kv: kv[1])},
        **special,
    }
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1, ensure_ascii=False))
    (d / "special_tokens_map.json").write_text(json.dumps({k: v for k, v in special.items() if v}, indent=1))


def write_generation_config(tok, d: Path, source=None):
    """The source's generation_config.json, else the stop tokens the engine itself stops on (greedy by default)."""
    src = _source_dir(source)
    if src is not None and (src / "generation_config.json").is_file():
        shutil.copy2(src / "generation_config.json", d / "generation_config.json")
        return
    cfg = {"bos_token_id": tok.bos_id, "eos_token_id": sorted(tok.stop_ids), "pad_token_id": tok.pad_id}
    (d / "generation_config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}, indent=1))
