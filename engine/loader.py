"""`engine.load(source)`: a preset name, an HF checkpoint directory or a .gguf file -> (model, tokenizer)."""

from __future__ import annotations

import os
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


def inference_dtype(device=None) -> torch.dtype:
    """The fastest dtype to serve or score in: bf16 on GPUs and on CPUs that multiply bf16 natively (AVX512-BF16 or
    AMX: about 3x the fp32 matmul rate on an AVX-512 EPYC), else fp32 (AVX2-only CPUs convert bf16 in software,
    slower than fp32). Training keeps `default_dtype`: fp32 LoRA factors and AdamW updates need fp32 on CPU."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cpu":
        return default_dtype(device)
    cpu = torch.cpu  # the flag probes are private in torch 2.x: absent ones mean "no"
    native = any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return torch.bfloat16 if native else torch.float32


DTYPE_CHOICES = ("auto", *DTYPES)
DTYPE_HELP = "auto (default): bf16 on GPUs and on CPUs with AVX512-BF16/AMX, else fp32"


def resolve_dtype(name: str | None = "auto", device=None) -> torch.dtype:
    """The one inference dtype rule of `engine.generate`, `engine.serve` and `coalm.eval` (`--dtype`): "auto" (or
    None) is `inference_dtype(device)`, anything else goes through `parse_dtype`. So the same model gives the same
    text in every tool; each tool prints `describe_dtype` once the model has loaded."""
    return inference_dtype(device) if name in (None, "auto") else parse_dtype(name)


def describe_dtype(name: str | None, dtype: torch.dtype) -> str:
    """One line for the user: which dtype `resolve_dtype(name)` chose, and why."""
    auto = name in (None, "auto")
    why = ("auto: native bf16 on this device" if dtype == torch.bfloat16 else "auto: no native bf16 here") if auto \
        else "--dtype"
    return f"dtype: {str(dtype).removeprefix('torch.')} ({why})"


def load(source: str | Path = "smollm2-135m", adapter: str | Path | None = None, dtype: torch.dtype | None = None,
         device: str | torch.device | None = None, random_init: bool = False, seed: int = 0, tp: int = 1,
         quantize: str | None = None):
    """Build the model on the meta device, then assign weights from `source` on `device`.

    source: a preset or alias (`smollm2-135m` is embedded; Llama presets need `random_init=True`, or a checkpoint
    directory), a directory with config.json + safetensors, or a .gguf file. adapter: a PEFT LoRA adapter directory.
    tp: under torchrun, load this rank's part of a `tp`-way tensor-parallel model: `engine.parallel.mesh` builds the (dp, tp)
    grid (refusing a world size or model that `tp` does not divide before anything is read), the model is sharded
    on the meta device, and the per-tensor hook `engine.parallel.tp.TPShard` reads only this rank's rows or columns.
    device: default cuda:LOCAL_RANK under torchrun, cuda on one GPU, else cpu.
    quantize: "nf4" stores the block linears 4-bit as QLoRA does, the adapter unmerged on top (engine/quantize.py).
    """
    from .hub import resolve_source

    source = resolve_source(source)  # a Hub id -> its snapshot folder in the HF cache (engine/hub.py)
    path = Path(str(source))
    gguf = path.suffix == ".gguf" or (not path.is_dir() and not random_init
                                      and resolve_name_or_none(str(source)) == "smollm2-135m")
    if path.is_dir():
        args = read_hf_config(path)
    elif gguf:
        args = None  # read from the file below
    else:
        name = resolve_name(str(source))
        args = get_config(name)
        if not random_init:
            raise WeightsError(f"preset {name!r} has no embedded weights: pass a checkpoint directory "
                               f"(--checkpoint DIR with config.json + safetensors) or random_init=True")
    shard = None
    if tp != 1:
        from .parallel.mesh import init_mesh
        from .parallel.tp import TPShard, check_tp

        if args is not None:
            check_tp(args, tp)
        shard = TPShard(init_mesh(tp).tp_group)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)

    def place(name, t):  # the per-tensor hook: this rank's part (all of it without TP), straight onto the device
        return (shard(name, t) if shard is not None else t[:]).to(device)

    if gguf:
        gguf_path = path if path.suffix == ".gguf" else smollm2_gguf_path()
        args, sd, reader = load_gguf(gguf_path, dtype=dtype)
        model = build_model(args)
        if shard is not None:
            check_tp(args, tp)
            shard.parallelize(model)
        assign_state_dict(model, {k: place(k, v) for k, v in sd.items()}, str(gguf_path))
        tokenizer = load_gguf_tokenizer(gguf_path, reader)
    elif path.is_dir():
        model = build_model(args)
        expected = {k: v.shape for k, v in model.state_dict().items()}  # full shapes, checked before sharding
        if shard is not None:
            shard.parallelize(model)
        assign_state_dict(model, load_hf_state_dict(path, expected, dtype=dtype, shard=place), str(path))
        if (path / "tokenizer.json").is_file() or (path / "original" / "tokenizer.model").is_file():
            tokenizer = load_tokenizer(path)
        else:  # a bare checkpoint: the family's own vocabulary
            tokenizer = load_tokenizer("llama3" if args.tokenizer == "llama3" else "smollm2-135m")
    else:
        model = build_model(args)
        if shard is not None:
            shard.parallelize(model)
        model.to_empty(device=device)
        model = model.to(dtype)
        if args.tie_embeddings:
            model.lm_head.weight = model.embed_tokens.weight
        rank = shard.rank if shard is not None else 0  # each TP rank draws its own shards
        model.init_weights(generator=torch.Generator(device=device).manual_seed(seed + rank))
        tokenizer = load_tokenizer(name)
    model.init_buffers(device)
    model = model.to(device=device)
    if device.type == "cpu":
        column_major_linears(model)
    model.eval().requires_grad_(False)
    if quantize is not None:  # NF4 base weights; the adapter, if any, is applied there on the NF4 base
        from .quantize import quantize_model

        sd = None  # drop the loaded full-precision tensors first: RSS then falls to the NF4 model's

        if adapter is not None and shard is not None:  # this TP rank's part of the adapter, on its NF4 shards
            from .lora import load_adapter

            load_adapter(model, adapter, quantize=True, shard=shard)
            adapter = None
        quantize_model(model, quantize, adapter)
        adapter = None
    if adapter is not None:
        from .lora import load_adapter

        load_adapter(model, adapter, shard=shard)
    if shard is not None:
        shard.parallelize(model)  # registers the LoRA gradient all-reduces (idempotent otherwise)
        # sampling draws from the default generator: give every TP rank the same stream so they pick the same tokens
        import torch.distributed as dist

        common = torch.tensor([torch.initial_seed() % (1 << 62)], device=device)
        dist.broadcast(common, src=dist.get_global_rank(shard.group, 0), group=shard.group)
        torch.manual_seed(int(common))
    return model, tokenizer


def default_device() -> torch.device:
    """cuda:LOCAL_RANK under torchrun (so N processes never all land on cuda:0), cuda on one GPU, else cpu."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")


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
