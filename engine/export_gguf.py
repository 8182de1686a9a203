"""Export a (merged) model as a GGUF file for llama.cpp, with the `gguf` package's writer: F16 or F32 tensors and
the tokenizer (byte-level BPE vocabulary, merges, token types, special ids, chat template) in the metadata.

    export_gguf(model, tok, "merged/model-f16.gguf")          # engine.merge --gguf calls this

The layout is llama.cpp's for the `llama` architecture (what its convert_hf_to_gguf.py writes): tensor names
`blk.N.attn_q.weight` ..., Q and K rows permuted to its rotary order (the inverse of `weights.unpermute_rope_rows`),
1-D norms kept in F32, and for Llama 3.1-style RoPE scaling a `rope_freqs.weight` tensor of per-frequency factors.
The tokenizer must be a `tokenizers` BPE (HF tokenizer.json or a GGUF vocabulary); the tiktoken file is refused
(`check_tokenizer`, which engine.merge calls before anything is written). The file is written under a hidden
sibling name and renamed into place when complete, so a killed export never leaves a truncated .gguf.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from .atomic import staged_file
from .weights import _GGUF_NAMES

_TO_GGUF = [(re.compile(ours.replace(".", r"\.").replace(r"\1", r"(\d+)") + "$"), pat) for pat, ours in _GGUF_NAMES]


def gguf_name(name: str) -> str:
    for rx, pat in _TO_GGUF:
        m = rx.match(name)
        if m:
            plain = pat.replace("\\.", ".").replace("(\\d+)", "{}")
            return plain.format(*m.groups())
    raise ValueError(f"no GGUF name for tensor {name}")


def permute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF Q/K row order -> llama.cpp's (each head's rotary halves interleaved as pairs)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def rope_factors(args) -> np.ndarray:
    """Llama 3.1 RoPE scaling as per-frequency divisors (llama.cpp's rope_freqs), from the published formula."""
    s = args.rope_scaling
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old = s["original_max_position_embeddings"]
    out = []
    for i in range(0, args.head_dim, 2):
        wavelen = 2 * math.pi * args.rope_theta ** (i / args.head_dim)
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def check_tokenizer(tok) -> dict:
    """The tokenizer's tokenizers-JSON spec; a one-line ValueError when GGUF cannot hold it."""
    backend = getattr(tok, "_backend", None)
    if not hasattr(backend, "to_str"):
        raise ValueError("GGUF export needs a byte-level BPE tokenizer (tokenizer.json or GGUF); the Llama 3 tiktoken "
                         "file is not supported: export from a checkpoint that has tokenizer.json")
    spec = json.loads(backend.to_str())
    if spec["model"]["type"] != "BPE":
        raise ValueError(f"GGUF export supports BPE tokenizers, not {spec['model']['type']}")
    return spec


def _tokenizer_fields(tok, n_vocab: int):
    backend = tok._backend
    spec = check_tokenizer(tok)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    added = {i: t for i, t in backend.get_added_tokens_decoder().items()}
    size = backend.get_vocab_size(with_added_tokens=True)
    tokens, types = [], []
    for i in range(max(size, n_vocab)):
        t = backend.id_to_token(i) if i < size else None
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(5)  # UNUSED
        else:
            tokens.append(t)
            types.append(1 if i not in added else 3 if added[i].special else 4)  # NORMAL, CONTROL, USER_DEFINED
    return tokens, types, merges


def export_gguf(model, tok, path, dtype=torch.float16, overwrite: bool = True) -> Path:
    path = Path(path)
    check_tokenizer(tok)
    with staged_file(path, overwrite) as tmp:
        _write(model, tok, tmp, dtype)
    return path


def _write(model, tok, path: Path, dtype):
    import gguf

    a = model.args
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(a.n_layers)
    w.add_context_length(a.max_seq_len)
    w.add_embedding_length(a.dim)
    w.add_feed_forward_length(a.ffn_dim)
    w.add_head_count(a.n_heads)
    w.add_head_count_kv(a.n_kv_heads)
    w.add_key_length(a.head_dim)
    w.add_value_length(a.head_dim)
    w.add_rope_dimension_count(a.head_dim)
    w.add_rope_freq_base(a.rope_theta)
    w.add_layer_norm_rms_eps(a.norm_eps)
    w.add_vocab_size(a.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == torch.float16 else gguf.LlamaFileType.ALL_F32)
    tokens, types, merges = _tokenizer_fields(tok, a.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe" if tok.name == "llama3" else "smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if tok.bos_id is not None:
        w.add_bos_token_id(tok.bos_id)
    w.add_add_bos_token(tok.name == "llama3")
    w.add_eos_token_id(tok.eot_id)  # llama.cpp stops on eos; the chat end-of-turn is what a chat model emits
    w.add_pad_token_id(tok.pad_id)
    w.add_chat_template(tok.chat_template)

    sd = dict(model.named_parameters())
    if a.tie_embeddings:
        sd.pop("lm_head.weight", None)
    if a.rope_scaling:
        w.add_tensor("rope_freqs.weight", rope_factors(a))
    from tqdm import tqdm

    for name, t in tqdm(sd.items(), desc="writing GGUF", leave=False):
        t = t.detach().float().cpu()
        if name.endswith("q_proj.weight"):
            t = permute_rope_rows(t, a.n_heads)
        elif name.endswith("k_proj.weight"):
            t = permute_rope_rows(t, a.n_kv_heads)
        arr = t.numpy() if t.ndim == 1 or dtype == torch.float32 else t.to(torch.float16).numpy()
        w.add_tensor(gguf_name(name), arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
