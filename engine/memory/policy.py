"""Activation checkpointing policies, the one place that says what each keeps for the backward pass.

    none       every block keeps what its ops save (fastest; most memory)
    selective  the attention half keeps its tensors; the MLP half (RMSNorm, gate/up, SwiGLU: 3 x ffn_dim wide, the
               largest activations of a Llama block) keeps only its input and is recomputed in the backward pass
    full       each block keeps only its input; the whole block is recomputed
    offload    as full, with the block inputs in host memory (GPU only: on a CPU the host *is* the device)

POLICIES is ordered by recompute cost, cheapest first: `auto` takes the first one that fits the budget.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .offload import HostStore, offloaded

POLICIES = ("none", "selective", "full", "offload")
CHOICES = ("auto",) + POLICIES


def check_policy(name: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"--activation-checkpointing: {name!r} is not one of {', '.join(CHOICES)}")
    return name


def policies_for(device_type: str) -> tuple[str, ...]:
    """The policies worth planning on a device: offload only pays where host memory is not device memory."""
    return POLICIES if device_type == "cuda" else POLICIES[:3]


def set_policy(model, policy: str, store: HostStore | None = None):
    """The trainer and the planner both configure a model through this (a bool is accepted: True is full)."""
    if isinstance(policy, bool):
        policy = "full" if policy else "none"
    if policy not in POLICIES:
        raise ValueError(f"activation checkpointing policy {policy!r} is not one of {', '.join(POLICIES)}")
    model.activation_checkpointing = policy
    model.offload_store = (store or HostStore()) if policy == "offload" else None
    return model


def run_block(model, layer, h, cos, sin, cu_seqlens, max_seqlen, cache):
    """One transformer block under the model's policy (only in training with gradients on; otherwise plain)."""
    policy = getattr(model, "activation_checkpointing", "none")
    if cache is not None or not (model.training and torch.is_grad_enabled()) or policy == "none":
        return layer(h, cos, sin, cu_seqlens, max_seqlen, cache)
    if policy == "selective":
        return layer(h, cos, sin, cu_seqlens, max_seqlen, None, recompute_mlp=True)
    if policy == "full":
        return checkpoint(layer, h, cos, sin, cu_seqlens, max_seqlen, None, use_reentrant=False)
    params = [p for p in layer.parameters() if p.requires_grad]
    return offloaded(model.offload_store, lambda x: layer(x, cos, sin, cu_seqlens, max_seqlen), h, params)
