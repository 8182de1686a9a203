"""Data parallelism over the `dp` dimension of the mesh: each replica trains on its slice of every global batch.

The optimizer must see what a single process sees. A step's loss is the mean over all its target tokens, so each
DP rank weights its micro-batch losses by `its tokens / the step's tokens` (one scalar all-reduce tells every rank
the step's total), and the gradients of the trainable parameters are then *summed* over DP: the sum of the ranks'
partial token means is exactly the single-process token mean, however the rows fell into ranks and micro-batches.

For LoRA/QLoRA the trainable parameters are a few MB, so a plain bucketed all-reduce (flatten, reduce, copy back)
is enough. A full fine-tune at DP > 1 is sharded with FSDP2 instead (engine.fsdp: the same SUM, as reduce-scatters);
every rank then runs as many micro-batches as the busiest one (`dp_pad`), because each forward all-gathers. The
gradient norm for clipping is the global one: under tensor parallelism a sharded parameter's squared norm is summed
over TP, a replicated one counted once; an FSDP shard's squared norm is summed over DP.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .mesh import Mesh

BUCKET_BYTES = 32 << 20  # per all-reduce: few enough calls for LoRA (one), bounded extra memory for --full


def dp_rows(step_rows: list[list[int]], mesh: Mesh, micro_batch_size: int) -> list[list[int]]:
    """This DP rank's micro-batches of a step: the step's rows (a function of the step alone, never of the rank
    count) cut into `dp` contiguous parts that differ by at most one row, each cut into micro-batches. With dp = 1
    the micro-batches are exactly the single-process ones."""
    rows = [i for mb in step_rows for i in mb]
    base, extra = divmod(len(rows), mesh.dp)
    start = mesh.dp_rank * base + min(mesh.dp_rank, extra)
    mine = rows[start:start + base + (mesh.dp_rank < extra)]
    return [mine[i:i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]


def dp_pad(step_rows: list[list[int]], mesh: Mesh, micro_batch_size: int) -> int:
    """How many zero-weight micro-batches this DP rank adds so that it runs as many as the busiest rank (FSDP2: every
    forward and backward is a collective, so the counts must agree; shares differing by one row can differ by one)."""
    counts = [len(dp_rows(step_rows, Mesh(dp=mesh.dp, dp_rank=r), micro_batch_size)) for r in range(mesh.dp)]
    return max(counts) - counts[mesh.dp_rank]


def all_reduce_sum(values: list[float], mesh: Mesh, device) -> list[float]:
    """Sum a few scalars over DP (one collective); the values themselves on a single replica."""
    if mesh.dp_group is None:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, group=mesh.dp_group)
    return t.tolist()


@torch.no_grad()
def reduce_gradients(params: list[torch.nn.Parameter], mesh: Mesh, bucket_bytes: int = BUCKET_BYTES):
    """Sum the gradients of `params` over DP, in buckets (a parameter a rank's batch never reached counts zero)."""
    if mesh.dp_group is None or not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket, size = [], 0
    for p in params + [None]:
        if p is not None and (not bucket or (bucket[0].grad.dtype == p.grad.dtype and size < bucket_bytes)):
            bucket.append(p)
            size += p.grad.numel() * p.grad.element_size()
            continue
        flat = torch.cat([q.grad.reshape(-1) for q in bucket])
        dist.all_reduce(flat, group=mesh.dp_group)
        offset = 0
        for q in bucket:
            q.grad.copy_(flat[offset:offset + q.grad.numel()].view_as(q.grad))
            offset += q.grad.numel()
        bucket, size = ([p], p.grad.numel() * p.grad.element_size()) if p is not None else ([], 0)


@torch.no_grad()
def clip_grad_norm(named_params: list[tuple[str, torch.nn.Parameter]], max_norm: float, mesh: Mesh) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ with the norm of the whole model: under TP each rank holds a shard of the
    split parameters (their squares are summed over TP) and a copy of the replicated ones (counted once); under FSDP2
    each DP rank holds a disjoint shard of every gradient (a DTensor: its squares are summed over DP)."""
    from torch.distributed.tensor import DTensor

    from .tp import split_dim

    grads = [(n, p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad) for n, p in named_params
             if p.grad is not None]
    if not grads:
        return torch.zeros(())
    sharded = any(isinstance(p.grad, DTensor) for _, p in named_params)
    device = grads[0][1].device
    split = torch.zeros((), dtype=torch.float64, device=device)
    whole = torch.zeros((), dtype=torch.float64, device=device)
    for n, g in grads:
        sq = g.double().pow(2).sum()
        if mesh.tp_group is not None and split_dim(n) is not None:
            split += sq
        else:
            whole += sq
    if sharded and mesh.dp_group is not None:
        both = torch.stack([split, whole])
        dist.all_reduce(both, group=mesh.dp_group)
        split, whole = both[0], both[1]
    if mesh.tp_group is not None:
        dist.all_reduce(split, group=mesh.tp_group)
    total = (split + whole).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # as torch's clip_grad_norm_ computes it
    for _, g in grads:
        g.mul_(coef.to(g.dtype))
    return total.float()


def rank_device(requested: str | None, mesh: Mesh) -> torch.device:
    """This process's device: cuda:LOCAL_RANK under torchrun. One explicit GPU for several processes is the
    duplicate-job trap (N full jobs on one GPU, all writing the same --out), refused."""
    from ..loader import default_device
    from .mesh import MeshError

    if requested is None:
        return default_device()
    device = torch.device(requested)
    if device.type == "cuda" and mesh.dp * mesh.tp > 1:
        raise MeshError(f"--device {requested} with {mesh.dp * mesh.tp} processes would put every rank on one GPU: "
                        f"leave --device unset (each rank then uses cuda:LOCAL_RANK)")
    return device


def map_data_parallel(fn, items: list, chunk: int, mesh: Mesh | None = None) -> list:
    """[*fn(items[i:i + chunk]) for each chunk], with the chunks dealt round-robin over the DP replicas (the TP ranks
    of a replica run each of its chunks together) and the results all-gathered over DP, in input order, on every
    rank. Each chunk is exactly one a single process would run, so batch-dependent numerics (padding) match too."""
    from .mesh import current_mesh

    mesh = mesh or current_mesh()
    chunks = [items[i:i + chunk] for i in range(0, len(items), max(1, chunk))]
    mine = {k: list(fn(c)) for k, c in enumerate(chunks) if k % mesh.dp == mesh.dp_rank}
    if mesh.dp_group is not None:
        parts = [None] * mesh.dp
        dist.all_gather_object(parts, mine, group=mesh.dp_group)
        mine = {k: v for part in parts for k, v in part.items()}
    return [x for k in range(len(chunks)) for x in mine[k]]
