"""Tensor-parallel building blocks: differentiable collectives and the vocab-parallel embedding, head and loss.

`engine.parallel.tp.parallelize` puts these into a built model; nothing here knows the model's layout.
- `copy_to_parallel`: identity forward, all-reduce of the gradient backward (a sublayer's input);
- `reduce_from_parallel`: all-reduce forward, identity backward (a sublayer's partial output);
- `VocabParallelEmbedding`: rank r owns vocab rows [r V/tp, (r+1) V/tp); looks up its own ids, zeroes the rest,
  all-reduces. `VocabParallelHead` all-gathers the logits (generation needs them whole);
- `vocab_parallel_cross_entropy`: the training loss without gathering the logits (per-rank logits -> all-reduce of
  the row max, then of sum-exp and the target logit, which only its owning rank contributes).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


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
    (as coalm_kernels.cross_entropy does); grad_hidden is this rank's partial sum, completed by copy_to_parallel."""

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
    """coalm_kernels.cross_entropy.fused_linear_cross_entropy with `weight` split by vocab rows across `group`."""
    D, vocab = hidden.shape[-1], weight.shape[0] * dist.get_world_size(group)
    labels = labels.reshape(-1).long()
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        raise ValueError(f"vocab_parallel_cross_entropy: labels outside [0, {vocab}) other than {ignore_index}: "
                         f"{labels[bad][:5].tolist()}")
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    hidden = copy_to_parallel(hidden.reshape(-1, D), group)
    return _VocabParallelCE.apply(hidden, weight, labels, vocab_start, group, ignore_index, chunk_size, need_grad)


def parallel_loss(model, input_ids, labels, position_ids=None, cu_seqlens=None, max_seqlen=None):
    """Transformer.loss with the vocab-parallel cross-entropy (the same arguments and label shift)."""
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)
    if cu_seqlens is not None:
        targets[:, cu_seqlens[1:].long() - 1] = -100
    h = model.hidden_states(input_ids, position_ids, cu_seqlens, max_seqlen)
    head = model.lm_head
    return vocab_parallel_cross_entropy(h, head.weight, targets, head.vocab_start, head.group)
