"""FSDP2 for full fine-tuning under data parallelism: parameters, gradients and AdamW's moments sharded over `dp`.

    torchrun --nproc_per_node 8 -m engine.train --model DIR --full          # each rank holds 1/8 of the state

`shard_model` applies `torch.distributed.fsdp.fully_shard` to every decoder block and then to the root over the `dp`
sub-mesh (torchtitan's order): a block's weights are all-gathered just before it runs and freed after, and its
gradients are reduce-scattered as soon as its backward is done. Training calls `model.loss`, not `forward`, so that
method is registered as an FSDP forward. The reduction is a plain SUM (divide factor 1, forced SUM so that gloo,
which has no PREMUL_SUM, works too): every rank already weights its loss by its share of the step's target tokens
(engine.data_parallel), so the sum over DP is the single-process token mean.

Checkpoints and exports go through `torch.distributed.checkpoint.state_dict` full state dicts (gathered to rank 0,
moved to host memory tensor by tensor) and are stored in the single-process format: a checkpoint written at DP 2
resumes at DP 1, 2 or 4, and `model/` is the same HF folder a single process writes.
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


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _names(model) -> list[str]:
    """Trainable parameter names in optimizer order (named_parameters drops the tied lm_head.weight)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def full_params(model) -> dict[str, torch.Tensor]:
    """Every trainable parameter at full size, by name, in host memory on global rank 0 (empty elsewhere): what
    engine.checkpoint.trainable_state gives in a single process. A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    msd = get_model_state_dict(model, options=_options())
    return {n: msd[n].contiguous() for n in _names(model)} if msd else {}


def full_optimizer(model, opt) -> dict:
    """The optimizer's state_dict as a single process's `opt.state_dict()` (parameters by index), on global rank 0
    (empty elsewhere). A collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, opt, options=_options())
    if not osd:
        return {}
    index = {n: i for i, n in enumerate(_names(model))}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]
    return {"state": {index[n]: s for n, s in osd["state"].items()}, "param_groups": groups}


def load_full_state(model, opt, params: dict, optimizer: dict | None):
    """The inverse of full_params and full_optimizer: every rank passes the same full tensors; each keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    msd = dict(params)
    if model.args.tie_embeddings and "embed_tokens.weight" in msd:
        msd["lm_head.weight"] = msd["embed_tokens.weight"]
    set_model_state_dict(model, msd, options=StateDictOptions(full_state_dict=True))
    if optimizer is not None:
        names = _names(model)
        osd = {"state": {names[int(i)]: s for i, s in optimizer["state"].items()},
               "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                                for g in optimizer["param_groups"]]}
        set_optimizer_state_dict(model, opt, osd, options=StateDictOptions(full_state_dict=True))
        for live, saved in zip(opt.param_groups, optimizer["param_groups"]):  # DCP returns tuples (betas) as lists
            live.update({k: v for k, v in saved.items() if k != "params"})


def unsharded_copy(model, params: dict):
    """A plain Transformer on host memory holding `params` (from full_params), for engine.export."""
    from .model import build_model

    plain = build_model(model.args)
    sd = dict(params)
    if model.args.tie_embeddings:
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    plain.load_state_dict(sd, assign=True)
    if model.args.tie_embeddings:
        plain.lm_head.weight = plain.embed_tokens.weight
    return plain
