"""Tensor parallelism on torch.distributed, applied to a built model (the model code knows nothing of it).

    torchrun --nproc_per_node 2 -m engine.generate --model DIR --tp 2 --prompt "Hi"

Megatron-style layout over a group of `tp` ranks (NCCL on GPUs, gloo on CPUs):
- q/k/v/gate/up are column-parallel (output rows split: each rank owns n_heads/tp query heads, n_kv_heads/tp KV
  heads and ffn_dim/tp MLP channels); o/down are row-parallel (input columns split). Each block's attention and MLP
  therefore start with `copy_to_parallel` (identity forward, all-reduce of the input gradient backward) and end with
  `reduce_from_parallel` (all-reduce of the partial output forward, identity backward): one all-reduce per sublayer
  each way. The model's `view(B, T, -1, head_dim)` and `new_cache` read the local head counts from the shapes.
- embed_tokens and lm_head are vocab-parallel: rank r owns vocab rows [r V/tp, (r+1) V/tp) (the same rows for
  both, so tied embeddings stay one Parameter). The embedding looks up its own ids, zeroes the rest, all-reduces.
  `model(tokens)` all-gathers the logits (generation needs them whole); `model.loss` is rebound to
  `vocab_parallel_cross_entropy`, which never gathers them (per-rank logits -> all-reduce of the row max, then of
  sum-exp and the target logit, which only its owning rank contributes).
- LoRA: column-parallel layers keep A replicated and B sharded, row-parallel ones A sharded and B replicated. A
  replicated factor sees only its rank's share of the gradient, so a hook all-reduces its gradient. QLoRA quantizes
  each rank's shard (`apply_lora_parallel(quantize=True)`); saved adapters are gathered to the single-process format.
Every rank builds on the meta device and reads only its own slices of the safetensors files.
"""

from __future__ import annotations

import math
import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW = ("o_proj", "down_proj")
VOCAB = ("embed_tokens", "lm_head")


# ------------------------------------------------------------------------------------ differentiable collectives
class _CopyToParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous().clone()
        dist.all_reduce(g, group=ctx.group)
        return g, None


class _ReduceFromParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, g):
        return g, None


class _GatherLastDim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, g):
        return g.chunk(dist.get_world_size(ctx.group), dim=-1)[dist.get_rank(ctx.group)].contiguous(), None


def copy_to_parallel(x, group=None):
    return _CopyToParallel.apply(x, group)


def reduce_from_parallel(x, group=None):
    return _ReduceFromParallel.apply(x, group)


# ----------------------------------------------------------------------------------------- vocab-parallel pieces
class VocabParallelEmbedding(nn.Module):
    def __init__(self, weight: nn.Parameter, vocab_start: int, group):
        super().__init__()
        self.weight, self.vocab_start, self.group = weight, vocab_start, group

    def forward(self, tokens):
        local = tokens - self.vocab_start
        outside = (local < 0) | (local >= self.weight.shape[0])
        h = F.embedding(local.masked_fill(outside, 0), self.weight)  # (B, T, dim), wrong rows zeroed below
        return reduce_from_parallel(h.masked_fill(outside[..., None], 0.0), self.group)


class VocabParallelHead(nn.Module):
    def __init__(self, weight: nn.Parameter, vocab_start: int, group):
        super().__init__()
        self.weight, self.vocab_start, self.group = weight, vocab_start, group

    def forward(self, h):  # (B, T, dim) -> full logits (B, T, vocab)
        return _GatherLastDim.apply(F.linear(copy_to_parallel(h, self.group), self.weight), self.group)


class _VocabParallelCE(torch.autograd.Function):
    """Mean CE over labels != ignore_index; weight is this rank's vocab rows. Gradients are computed in forward
    (as kernels.cross_entropy does); grad_hidden is this rank's partial sum, completed by copy_to_parallel."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, vocab_start, group, ignore_index, chunk_size, need_grad):
        V = weight.shape[0]
        valid = (labels != ignore_index).nonzero().squeeze(1)
        n = valid.numel()
        grad_h = torch.zeros_like(hidden) if need_grad and ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight) if need_grad and ctx.needs_input_grad[1] else None
        losses = hidden.new_zeros(n, dtype=torch.float32)
        h, y = hidden[valid], labels[valid] - vocab_start
        chunk = chunk_size or max(1, (256 << 20) // (4 * V))
        for s in range(0, n, chunk):
            hc, yc = h[s:s + chunk], y[s:s + chunk]
            z = (hc @ weight.t()).float()  # (rows, V_local)
            m = z.max(dim=1).values
            dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
            e = (z - m[:, None]).exp_()
            own = (yc >= 0) & (yc < V)  # this rank holds the target's logit
            yl = yc.clamp(0, V - 1)[:, None]
            stats = torch.stack((e.sum(1), z.gather(1, yl).squeeze(1) * own))
            dist.all_reduce(stats, group=group)  # [sum exp(z - m), z_target] over the whole vocab
            losses[s:s + chunk] = m + stats[0].log() - stats[1]
            if grad_h is not None or grad_w is not None:
                dz = e.div_(stats[0][:, None])  # softmax on this rank's vocab slice
                dz.scatter_add_(1, yl, -own[:, None].float())
                dz = dz.div_(n).to(hidden.dtype)
                if grad_h is not None:
                    grad_h.index_add_(0, valid[s:s + chunk], dz @ weight)
                if grad_w is not None:
                    grad_w.addmm_(dz.t(), hc)
        ctx.save_for_backward(grad_h, grad_w)
        return losses.sum() / max(n, 1)

    @staticmethod
    def backward(ctx, g):
        gh, gw = ctx.saved_tensors
        return (None if gh is None else gh * g.to(gh.dtype), None if gw is None else gw * g.to(gw.dtype),
                None, None, None, None, None, None)


def vocab_parallel_cross_entropy(hidden, weight, labels, vocab_start: int, group=None, ignore_index: int = -100,
                                 chunk_size: int | None = None) -> torch.Tensor:
    """kernels.cross_entropy.fused_linear_cross_entropy with `weight` split by vocab rows across `group`."""
    D, vocab = hidden.shape[-1], weight.shape[0] * dist.get_world_size(group)
    labels = labels.reshape(-1).long()
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        raise ValueError(f"vocab_parallel_cross_entropy: labels outside [0, {vocab}) other than {ignore_index}: "
                         f"{labels[bad][:5].tolist()}")
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    hidden = copy_to_parallel(hidden.reshape(-1, D), group)
    return _VocabParallelCE.apply(hidden, weight, labels, vocab_start, group, ignore_index, chunk_size, need_grad)


def _parallel_loss(model, tokens, labels, positions=None, cu_seqlens=None, max_seqlen=None):
    """Transformer.loss with the vocab-parallel cross-entropy (the same label shift)."""
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)
    if cu_seqlens is not None:
        targets[:, cu_seqlens[1:].long() - 1] = -100
    h = model.hidden_states(tokens, positions, cu_seqlens, max_seqlen)
    head = model.lm_head
    return vocab_parallel_cross_entropy(h, head.weight, targets, head.vocab_start, head.group)


# ------------------------------------------------------------------------------------------------------ sharding
def check_tp(args, tp: int):
    """Raise (before anything is loaded) unless `tp` splits the heads, KV heads, MLP width and vocabulary."""
    if not isinstance(tp, int) or tp < 1:
        raise ValueError(f"tensor-parallel degree must be a positive integer, got {tp!r}")
    dims = {"n_heads": args.n_heads, "n_kv_heads": args.n_kv_heads, "ffn_dim": args.ffn_dim,
            "vocab_size": args.vocab_size}
    bad = {k: v for k, v in dims.items() if v % tp}
    if bad:
        ok = [d for d in range(1, args.n_kv_heads + 1) if all(v % d == 0 for v in dims.values())]
        raise ValueError(f"tensor-parallel degree {tp} does not divide {', '.join(f'{k}={v}' for k, v in bad.items())}"
                         f"; valid degrees for this model: {ok}")


def split_dim(name: str) -> int | None:
    """Which dim of parameter `name` (our naming) is split across ranks: 0 rows, 1 columns, None replicated."""
    parts = name.split(".")
    module = parts[-2] if len(parts) > 1 else ""
    if module in ("lora_A", "lora_B") or parts[-1] in ("lora_A", "lora_B"):  # PEFT key or our parameter name
        module, factor = (parts[-3], parts[-2]) if parts[-1] == "weight" else (parts[-2], parts[-1])
        return 0 if module in COLUMN and factor == "lora_B" else 1 if module in ROW and factor == "lora_A" else None
    return 0 if module in COLUMN + VOCAB else 1 if module in ROW else None


def _local(t: torch.Tensor, dim: int, rank: int, tp: int) -> torch.Tensor:
    size = t.shape[dim] // tp
    return t.narrow(dim, rank * size, size)


def _shard_param(p: nn.Parameter, dim: int, rank: int, tp: int) -> nn.Parameter:
    if p.is_meta:
        shape = list(p.shape)
        shape[dim] //= tp
        return nn.Parameter(torch.empty(shape, dtype=p.dtype, device="meta"), requires_grad=p.requires_grad)
    return nn.Parameter(_local(p.detach(), dim, rank, tp).clone(), requires_grad=p.requires_grad)


def _allreduce_grad(p: nn.Parameter, group):
    """A replicated LoRA factor gets only this rank's share of its gradient: sum the shares."""
    if p.requires_grad and not getattr(p, "_tp_hooked", False):
        def hook(g):
            g = g.clone()
            dist.all_reduce(g, group=group)
            return g
        p.register_hook(hook)
        p._tp_hooked = True


def parallelize(model, group=None):
    """Shard a built model (on meta or real tensors, with or without LoRA layers) across `group`; idempotent, so
    call it again after adding LoRA layers to register their gradient all-reduces."""
    tp, rank = dist.get_world_size(group), dist.get_rank(group)
    a = model.args
    check_tp(a, tp)
    full_out = {"q_proj": a.n_heads * a.head_dim, "k_proj": a.n_kv_heads * a.head_dim,
                "v_proj": a.n_kv_heads * a.head_dim, "gate_proj": a.ffn_dim, "up_proj": a.ffn_dim}
    full_in = {"o_proj": a.n_heads * a.head_dim, "down_proj": a.ffn_dim}
    for block in model.layers:
        for parent in (block.self_attn, block.mlp):
            for name, m in parent.named_children():
                col = name in COLUMN
                lora = hasattr(m, "lora_A")
                if (m.out_features == full_out[name]) if col else (m.in_features == full_in[name]):
                    if getattr(m, "nf4", None) is not None:
                        raise ValueError(f"{name}: an NF4 base weight cannot be re-sharded; call parallelize before "
                                         f"quantizing (apply_lora_parallel(model, quantize=True) quantizes per shard)")
                    m.weight = _shard_param(m.weight, 0 if col else 1, rank, tp)
                    if col:
                        m.out_features //= tp
                        if lora:
                            m.lora_B = _shard_param(m.lora_B, 0, rank, tp)
                    else:
                        m.in_features //= tp
                        if lora:
                            m.lora_A = _shard_param(m.lora_A, 1, rank, tp)
                if lora:
                    _allreduce_grad(m.lora_A if col else m.lora_B, group)
            if not getattr(parent, "_tp_hooked", False):  # collectives at each sublayer's entry and exit
                parent.register_forward_pre_hook(lambda mod, args: (copy_to_parallel(args[0], group), *args[1:]))
                parent.register_forward_hook(lambda mod, args, out: reduce_from_parallel(out, group))
                parent._tp_hooked = True
    if not isinstance(model.embed_tokens, VocabParallelEmbedding):
        start = rank * (a.vocab_size // tp)
        emb = _shard_param(model.embed_tokens.weight, 0, rank, tp)
        head = emb if a.tie_embeddings else _shard_param(model.lm_head.weight, 0, rank, tp)
        model.embed_tokens = VocabParallelEmbedding(emb, start, group)
        model.lm_head = VocabParallelHead(head, start, group)
        model.loss = _parallel_loss.__get__(model)  # instance attribute: Transformer.loss stays untouched
        model.tp_group = group
    return model


# ------------------------------------------------------------------------------------------------------- LoRA
def apply_lora_parallel(model, rank: int = 16, alpha: float = 32, targets=None, dropout: float = 0.0,
                        quantize: bool = False, seed: int = 0):
    """engine.lora.apply_lora on a parallelized model: NF4 per shard; A drawn whole (LoRALinear's Kaiming-uniform
    over the full input width, one generator seeded alike on every rank) and sliced, so every rank agrees."""
    from .lora import apply_lora, lora_modules

    apply_lora(model, rank, alpha, targets, dropout, quantize)
    tp, r = dist.get_world_size(model.tp_group), dist.get_rank(model.tp_group)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in lora_modules(model).items():
            row = name.split(".")[-1] in ROW
            full = torch.empty(rank, m.in_features * (tp if row else 1))
            nn.init.kaiming_uniform_(full, a=math.sqrt(5), generator=gen)
            m.lora_A.copy_(_local(full, 1, r, tp) if row else full)
    return parallelize(model, model.tp_group)


def gather_lora_state_dict(model, grads: bool = False) -> dict[str, torch.Tensor]:
    """The LoRA factors (or their gradients) under PEFT's names at full size, on every rank."""
    from .lora import lora_state_dict

    group = model.tp_group
    out = {}
    for key, t in lora_state_dict(model).items():
        if grads:
            name = key.removeprefix("base_model.model.model.").removesuffix(".weight")
            t = model.get_parameter(name).grad
        dim = split_dim(key)
        if dim is not None:
            parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
            dist.all_gather(parts, t.contiguous(), group=group)
            t = torch.cat(parts, dim=dim)
        out[key] = t
    return out


def save_adapter_parallel(model, directory, base_model: str | None = None):
    """engine.lora.save_adapter for a parallelized model: gathered factors, written by rank 0."""
    from .lora import save_adapter

    state = gather_lora_state_dict(model)
    if dist.get_rank(model.tp_group) == 0:
        save_adapter(model, directory, base_model, state=state)
    dist.barrier(group=model.tp_group)
    return Path(directory)


def _load_adapter(model, directory):
    from .lora import _targets_from_config, apply_lora, lora_modules, lora_state_dict, read_adapter

    cfg, weights = read_adapter(directory)
    apply_lora(model, cfg["r"], cfg["lora_alpha"], _targets_from_config(cfg))
    tp, r = dist.get_world_size(model.tp_group), dist.get_rank(model.tp_group)
    weights = {k.replace(".default.", "."): v for k, v in weights.items()}
    mods = lora_modules(model)
    local = lora_state_dict(model)
    unknown, missing = sorted(set(weights) - set(local)), sorted(set(local) - set(weights))
    if unknown or missing:
        raise ValueError(f"{directory}: adapter does not match the model: unexpected {unknown[:3]}, missing {missing[:3]}")
    with torch.no_grad():
        for key, t in weights.items():
            name, part = key.removeprefix("base_model.model.model.").removesuffix(".weight").rsplit(".", 1)
            dim = split_dim(key)
            getattr(mods[name], part).copy_(t if dim is None else _local(t, dim, r, tp))
    return parallelize(model, model.tp_group)


# ------------------------------------------------------------------------------------------------------ loading
def init_distributed(timeout_s: float | None = None):
    """The default process group from torchrun's environment (NCCL on CUDA, gloo on CPU); returns its group.

    A rank that dies makes the others fail instead of hang: collectives time out after `timeout_s` (default
    $COALM_DIST_TIMEOUT or 600 s) and NCCL's asynchronous error handling tears the process down."""
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(f"tensor parallelism needs torchrun (missing env {missing}): "
                               f"torchrun --nproc_per_node N -m engine.generate ... --tp N")
        timeout = timedelta(seconds=float(timeout_s or os.environ.get("COALM_DIST_TIMEOUT", "600")))
        if torch.cuda.is_available():
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl", timeout=timeout)
        else:
            dist.init_process_group("gloo", timeout=timeout)
    return dist.group.WORLD


def load_parallel(source, tp: int, adapter=None, random_init: bool = False, dtype=None, seed: int = 0,
                  timeout_s: float | None = None):
    """engine.load for one rank of a `tp`-way tensor-parallel group (run under torchrun) -> (model, tokenizer).

    Each rank reads only its slices of an HF checkpoint. GGUF files are read whole and then sliced (only the small
    embedded model comes as GGUF). With random_init, each rank draws its own shards (seed + rank)."""
    from .config import get_config
    from .loader import default_dtype, resolve_name_or_none
    from .model import build_model
    from .tokenizer import load_gguf_tokenizer, load_tokenizer
    from .weights import assign_state_dict, load_gguf, load_hf_state_dict, read_hf_config, smollm2_gguf_path

    path = Path(str(source))
    gguf = path.suffix == ".gguf" or (not path.is_dir() and not random_init
                                      and resolve_name_or_none(str(source)) == "smollm2-135m")
    if path.is_dir():
        args = read_hf_config(path)
    elif gguf:
        args = get_config("smollm2-135m") if path.suffix != ".gguf" else None
    else:
        args = get_config(str(source))
        if not random_init:
            raise ValueError(f"preset {source!r} has no embedded weights: pass a checkpoint directory or random_init")
    if args is not None:
        check_tp(args, tp)
    group = init_distributed(timeout_s)
    if dist.get_world_size(group) != tp:
        raise ValueError(f"--tp {tp} but the process group has {dist.get_world_size(group)} ranks "
                         f"(use torchrun --nproc_per_node {tp})")
    rank = dist.get_rank(group)
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
    dtype = dtype or default_dtype(device)
    if gguf:
        gguf_path = path if path.suffix == ".gguf" else smollm2_gguf_path()
        args, sd, reader = load_gguf(gguf_path, dtype=dtype)
        check_tp(args, tp)
        model = parallelize(build_model(args), group)
        sd = {k: v if split_dim(k) is None else _local(v, split_dim(k), rank, tp).clone() for k, v in sd.items()}
        assign_state_dict(model, sd, str(gguf_path))
        tokenizer = load_gguf_tokenizer(gguf_path, reader)
    else:
        model = build_model(args)
        full = {k: v.shape for k, v in model.state_dict().items()}
        parallelize(model, group)
        if path.is_dir():
            def shard(name, sl):  # read only this rank's rows / columns, straight onto the device
                dim = split_dim(name)
                size = sl.get_shape()[dim] // tp if dim is not None else 0
                t = sl[:] if dim is None else sl[rank * size:(rank + 1) * size] if dim == 0 else \
                    sl[:, rank * size:(rank + 1) * size]
                return t.to(device)
            assign_state_dict(model, load_hf_state_dict(path, full, dtype=dtype, shard=shard), str(path))
            tokenizer = load_tokenizer(path if (path / "tokenizer.json").is_file()
                                       else "smollm2-135m" if args.tokenizer == "chatml" else args.tokenizer)
        else:
            model.to_empty(device=device)
            model = model.to(dtype)
            if args.tie_embeddings:
                model.lm_head.weight = model.embed_tokens.weight
            model.init_weights(generator=torch.Generator(device=device).manual_seed(seed + rank))
            tokenizer = load_tokenizer(resolve_name_or_none(str(source)))
    model.init_buffers(device)
    model = model.to(device=device)
    model.eval().requires_grad_(False)
    if adapter is not None:
        _load_adapter(model, adapter)
    # sampling draws from the default generator: give every rank the same stream so they pick the same tokens
    common = torch.tensor([torch.initial_seed() % (1 << 62)], device=device)
    dist.broadcast(common, src=0, group=group)
    torch.manual_seed(int(common))
    return model, tokenizer
