"""FSDP2 for full fine-tuning under data parallelism: parameters, gradients and AdamW's moments sharded over `dp`.

    torchrun --nproc_per_node 8 -m engine.train --model DIR --full          # each rank holds 1/8 of the state

`shard_model` applies `torch.distributed.fsdp.fully_shard` to every decoder block and then to the root over the `dp`
sub-mesh (torchtitan's order): a block's weights are all-gathered just before it runs and freed after, and its
gradients are reduce-scattered as soon as its backward is done. Training calls `model.loss`, not `forward`, so that
method is registered as an FSDP forward. The reduction is a plain SUM (divide factor 1, forced SUM so that gloo,
which has no PREMUL_SUM, works too): every rank already weights its loss by its share of the step's target tokens
(engine.data_parallel), so the sum over DP is the single-process token mean.

Checkpoints and exports gather the shards one tensor at a time into host memory and are stored in the single-process
format (per TP rank under tensor parallelism): a checkpoint written at DP 2 resumes at DP 1, 2 or 4, and `model/` is
the same HF folder a single process writes. With `--tp`, each TP rank's local shards are what FSDP2 shards over DP.
"""

from __future__ import annotations

import torch

from .mesh import Mesh


def uses_fsdp(mode: str, mesh: Mesh) -> bool:
    """--full with more than one DP replica is sharded; LoRA/QLoRA keep the bucketed all-reduce (few MB)."""
    return mode == "full" and mesh.dp > 1


def shard_model(model, mesh: Mesh):
    """fully_shard each block, then the root, over the mesh's `dp` dimension (in place; returns the model). A model
    loaded into host memory moves to the mesh's device here, one block at a time, so the device never holds it
    whole."""
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

    dp_mesh = mesh.device_mesh["dp"]
    with torch.no_grad():
        for p in model.parameters():  # FSDP shards dim 0 of contiguous storage; the CPU loader stores W^T's layout
            if not p.is_contiguous():
                p.data = p.data.contiguous()
    for block in model.layers:
        fully_shard(block, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)
    register_fsdp_forward_method(model, "loss")
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    return model


def describe(model, mesh: Mesh) -> str:
    """', FSDP2 over DP 2: 3.33M on this rank' for a sharded model (the training banner), else ''."""
    if not is_sharded(model):
        return ""
    local = sum(p.to_local().numel() for p in model.parameters())
    return f", FSDP2 over DP {mesh.dp}: {local / 1e6:.2f}M on this rank"


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor all-gathered to its full size (a collective over its mesh); a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _shard(full: torch.Tensor, like) -> torch.Tensor:
    """This rank's piece of `full` laid out as the DTensor `like` (every rank holds `full`: no communication)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


# Hand-written rather than torch.distributed.checkpoint.state_dict's full state dicts: those gather onto global rank 0
# only (ranks_only=(0,)), while each TP rank's first DP replica must write its own shards, and they key the optimizer
# by name where a single process's `opt.state_dict()` (the checkpoint format) keys it by index.
def gather_params(model, mesh: Mesh, across_tp: bool = False) -> dict[str, torch.Tensor]:
    """The trainable parameters at full DP size, by name, in host memory: on DP replica 0 each TP rank's own shards
    (a checkpoint's trainable-rank{t}), or with `across_tp` whole tensors on global rank 0 only (an export); empty
    elsewhere. A collective: every rank calls it. One tensor at a time passes through device memory."""
    import torch.distributed as dist

    from .tp import split_dim

    keep = mesh.dp_rank == 0 and (not across_tp or mesh.tp_rank == 0)
    out = {}
    for n, p in model.named_parameters():  # (named_parameters lists a tied lm_head once, as embed_tokens)
        if not p.requires_grad:
            continue
        t = _full(p.detach())
        if across_tp and mesh.tp_group is not None and mesh.dp_rank == 0 and split_dim(n) is not None:
            parts = [torch.empty_like(t) for _ in range(mesh.tp)]
            dist.all_gather(parts, t.contiguous(), group=mesh.tp_group)
            t = torch.cat(parts, dim=split_dim(n))
        if keep:
            out[n] = t.cpu().contiguous()
    return out


def gather_optimizer(opt, mesh: Mesh) -> dict:
    """`opt.state_dict()` (parameters by index, as in a single process) with AdamW's moments at full DP size, in
    host memory on DP replica 0 (each TP rank its own shards); empty elsewhere. A collective."""
    sd = opt.state_dict()
    keep = mesh.dp_rank == 0
    state = {}
    for i, s in sd["state"].items():
        full = {k: _full(v) if torch.is_tensor(v) else v for k, v in s.items()}
        state[i] = {k: v.cpu() if keep and torch.is_tensor(v) else v for k, v in full.items()}
    return {"state": state, "param_groups": sd["param_groups"]} if keep else {}


def load_sharded(model, opt, params: dict, optimizer: dict | None):
    """The inverse of gather_params and gather_optimizer: every rank passes its TP rank's full tensors (any DP size
    wrote them); each keeps its DP shard."""
    named = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    with torch.no_grad():
        for n, p in zip(names, named):
            p.copy_(_shard(params[n].to(p.dtype), p))
    if optimizer is not None:
        state = {i: {k: _shard(v, named[int(i)]) if torch.is_tensor(v) and v.dim() else v for k, v in s.items()}
                 for i, s in optimizer["state"].items()}
        opt.load_state_dict({"state": state, "param_groups": optimizer["param_groups"]})


def unsharded_copy(model, params: dict):
    """A plain Transformer on host memory holding `params` (whole tensors from gather_params), for engine.export."""
    from ..model import build_model

    plain = build_model(model.args)
    sd = dict(params)
    if model.args.tie_embeddings:
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    plain.load_state_dict(sd, assign=True)
    if model.args.tie_embeddings:
        plain.lm_head.weight = plain.embed_tokens.weight
    return plain
