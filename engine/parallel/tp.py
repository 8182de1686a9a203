"""Tensor parallelism: the plan for a Llama model, applied to a built model (the model code knows nothing of it).

    torchrun --nproc_per_node 2 -m engine.generate --model DIR --tp 2 --prompt "Hi"

Megatron-style layout over the `tp` ranks of a group (the `tp` dimension of `engine.mesh`):
- q/k/v/gate/up are column-parallel (output rows split: each rank owns n_heads/tp query heads, n_kv_heads/tp KV
  heads and ffn_dim/tp MLP channels); o/down are row-parallel (input columns split). Each block's attention and MLP
  therefore start with `copy_to_parallel` and end with `reduce_from_parallel` (engine.tp_layers): one all-reduce
  per sublayer each way. The model's `view(B, T, -1, head_dim)` and the KV cache read the local head counts.
- embed_tokens and lm_head are vocab-parallel over the same rows, so tied embeddings stay one Parameter;
  `model.loss` is rebound to the vocab-parallel cross-entropy, which never gathers the logits.
- LoRA: column-parallel layers keep A replicated and B sharded, row-parallel ones A sharded and B replicated. A
  replicated factor sees only its rank's share of the gradient, so a hook all-reduces it. QLoRA quantizes each
  rank's shard; saved adapters are gathered to the single-process format.
Loading is `engine.load(..., tp=N)`: `TPShard` is the loader's per-tensor hook, so each rank reads only its slices.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .tp_layers import VocabParallelEmbedding, VocabParallelHead, copy_to_parallel, parallel_loss, reduce_from_parallel

COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW = ("o_proj", "down_proj")
VOCAB = ("embed_tokens", "lm_head")


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
    """Which dim of parameter `name` (our naming: `...q_proj.weight`, `...o_proj.lora_A`) is split across ranks:
    0 rows, 1 columns, None replicated."""
    parts = name.split(".")
    module = parts[-2] if len(parts) > 1 else ""
    if parts[-1] in ("lora_A", "lora_B"):
        return 0 if module in COLUMN and parts[-1] == "lora_B" else 1 if module in ROW and parts[-1] == "lora_A" \
            else None
    return 0 if module in COLUMN + VOCAB else 1 if module in ROW else None


class TPShard:
    """The loader's per-tensor hook: this rank's rows or columns of a full tensor (or of a safetensors slice,
    which then reads only those bytes from disk). Replicated tensors come back whole."""

    def __init__(self, group):
        self.group, self.rank, self.tp = group, dist.get_rank(group), dist.get_world_size(group)

    def __call__(self, name: str, t):
        dim = split_dim(name)
        if dim is None:
            return t[:]
        n = (t.get_shape() if hasattr(t, "get_shape") else t.shape)[dim] // self.tp
        part = t[self.rank * n:(self.rank + 1) * n] if dim == 0 else t[:, self.rank * n:(self.rank + 1) * n]
        return part.clone() if torch.is_tensor(t) else part  # a view would keep the whole tensor alive

    def parallelize(self, model):
        return parallelize(model, self.group)


def _shard_param(p: nn.Parameter, name: str, shard: TPShard) -> nn.Parameter:
    dim = split_dim(name)
    if p.is_meta:
        shape = list(p.shape)
        shape[dim] //= shard.tp
        return nn.Parameter(torch.empty(shape, dtype=p.dtype, device="meta"), requires_grad=p.requires_grad)
    return nn.Parameter(shard(name, p.detach()), requires_grad=p.requires_grad)


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
    shard = TPShard(group)
    a = model.args
    check_tp(a, shard.tp)
    full_out = {"q_proj": a.n_heads * a.head_dim, "k_proj": a.n_kv_heads * a.head_dim,
                "v_proj": a.n_kv_heads * a.head_dim, "gate_proj": a.ffn_dim, "up_proj": a.ffn_dim}
    full_in = {"o_proj": a.n_heads * a.head_dim, "down_proj": a.ffn_dim}
    for block in model.layers:
        for parent in (block.self_attn, block.mlp):
            for name, m in parent.named_children():
                col, lora = name in COLUMN, hasattr(m, "lora_A")
                if (m.out_features == full_out[name]) if col else (m.in_features == full_in[name]):
                    if getattr(m, "nf4", None) is not None:
                        raise ValueError(f"{name}: an NF4 base weight cannot be re-sharded; call parallelize before "
                                         f"quantizing (apply_lora_parallel(model, quantize=True) quantizes per shard)")
                    m.weight = _shard_param(m.weight, f"{name}.weight", shard)
                    factor = "lora_B" if col else "lora_A"
                    if lora:
                        setattr(m, factor, _shard_param(getattr(m, factor), f"{name}.{factor}", shard))
                    if col:
                        m.out_features //= shard.tp
                    else:
                        m.in_features //= shard.tp
                if lora:
                    _allreduce_grad(m.lora_A if col else m.lora_B, group)
            if not getattr(parent, "_tp_hooked", False):  # collectives at each sublayer's entry and exit
                parent.register_forward_pre_hook(lambda mod, args: (copy_to_parallel(args[0], group), *args[1:]))
                parent.register_forward_hook(lambda mod, args, out: reduce_from_parallel(out, group))
                parent._tp_hooked = True
    if not isinstance(model.embed_tokens, VocabParallelEmbedding):
        start = shard.rank * (a.vocab_size // shard.tp)
        emb = _shard_param(model.embed_tokens.weight, "embed_tokens.weight", shard)
        head = emb if a.tie_embeddings else _shard_param(model.lm_head.weight, "lm_head.weight", shard)
        model.embed_tokens = VocabParallelEmbedding(emb, start, group)
        model.lm_head = VocabParallelHead(head, start, group)
        model.loss = parallel_loss.__get__(model)  # instance attribute: Transformer.loss stays untouched
        model.tp_group = group
    return model


def apply_lora_parallel(model, rank: int = 16, alpha: float = 32, targets=None, dropout: float = 0.0,
                        quantize: bool = False, seed: int = 0):
    """engine.lora.apply_lora on a parallelized model, NF4 per shard, with the factors a single process gets after
    `torch.manual_seed(seed); apply_lora(...)`: each A is drawn whole from the same generator, in the same order, on
    the same device, and sliced, so a TP run starts where a single-process run does."""
    from ..lora import apply_lora, lora_modules

    apply_lora(model, rank, alpha, targets, dropout, quantize)
    shard = TPShard(model.tp_group)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, m in lora_modules(model).items():
            row = name.split(".")[-1] in ROW
            full = torch.empty(rank, m.in_features * (shard.tp if row else 1), dtype=m.lora_A.dtype,
                               device=m.lora_A.device)
            nn.init.kaiming_uniform_(full, a=math.sqrt(5))
            m.lora_A.copy_(shard(f"{name}.lora_A", full))
    return parallelize(model, model.tp_group)


def gather_lora_state_dict(model, grads: bool = False) -> dict[str, torch.Tensor]:
    """The LoRA factors (or their gradients) under PEFT's names at full size, on every rank of the TP group."""
    from ..lora import lora_modules
    from ..model import peft_lora_name

    group, out = model.tp_group, {}
    for name, m in lora_modules(model).items():
        for factor in ("lora_A", "lora_B"):
            p = getattr(m, factor)
            t = p.grad if grads else p.detach()
            if split_dim(f"{name}.{factor}") is not None:
                parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
                dist.all_gather(parts, t.contiguous(), group=group)
                t = torch.cat(parts, dim=split_dim(f"{name}.{factor}"))
            out[peft_lora_name(name, factor)] = t
    return out


def save_adapter_parallel(model, directory, base_model: str | None = None, write: bool = True):
    """engine.lora.save_adapter for a parallelized model: factors gathered over TP (a collective), written by the
    group's first rank when `write` (a data-parallel replica other than the first passes False)."""
    from ..lora import save_adapter

    state = gather_lora_state_dict(model)
    if write and dist.get_rank(model.tp_group) == 0:
        save_adapter(model, directory, base_model, state=state)
    dist.barrier(group=model.tp_group)
    return Path(directory)

