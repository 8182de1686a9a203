"""Activation offload: a block's input is kept in (pinned) host memory between the forward and the backward pass, and
the block is recomputed from it in the backward pass, as Unsloth's offloaded gradient checkpointing does.

On a GPU the copy to the host runs on a side stream, so the next block's forward overlaps it; the copy back is
issued on the compute stream right before the block's recompute (the backward needs it there and then). The
device copy of the input is released once its host copy is done (`record_stream` keeps the caching allocator from
reusing it earlier). On a CPU there is no separate host memory: `HostStore(force=True)` still copies (the tests use it
to check which tensors go to the host and that the ones coming back are the ones that left), otherwise it is a no-op.

Why hand-written: torch.autograd.graph.save_on_cpu offloads every saved tensor synchronously on the compute stream;
we want one tensor per block (the checkpoint) and the copy off the critical path.
"""

from __future__ import annotations

import torch


class HostStore:
    """Copies tensors to host memory and back. `events` counts (pack, unpack) calls for the tests."""

    def __init__(self, force: bool = False, pin: bool | None = None):
        self.force = force
        self.pin = torch.cuda.is_available() if pin is None else pin
        self._stream = None
        self.packed: list[tuple[tuple[int, ...], torch.dtype]] = []  # what went to the host, in order
        self.unpacked = 0

    def _side_stream(self, device):
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        return self._stream

    def pack(self, t: torch.Tensor):
        if not t.is_cuda and not self.force:
            return ("same", t)  # the host is the device: nothing to gain
        self.packed.append((tuple(t.shape), t.dtype))
        if not t.is_cuda:
            return ("host", t.detach().clone(), None, t.device)
        host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=self.pin)
        side = self._side_stream(t.device)
        side.wait_stream(torch.cuda.current_stream(t.device))  # t is written by the compute stream
        with torch.cuda.stream(side):
            host.copy_(t, non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        t.record_stream(side)  # the allocator must not hand t's memory out before the copy has read it
        return ("host", host, done, t.device)

    def unpack(self, packed) -> torch.Tensor:
        if packed[0] == "same":
            return packed[1]
        _, host, done, device = packed
        self.unpacked += 1
        if done is None:
            return host.to(device)
        torch.cuda.current_stream(device).wait_event(done)
        return host.to(device, non_blocking=True)


class OffloadedCheckpoint(torch.autograd.Function):
    """out = run(h) with h in host memory until the backward pass, which recomputes run(h) from the copy."""

    @staticmethod
    def forward(ctx, store: HostStore, run, h: torch.Tensor, *params: torch.Tensor):
        # `params` (the block's trainable tensors) only make autograd call backward when h itself needs no gradient
        # (LoRA's first block: frozen embeddings); their gradients arrive through the recompute's own backward.
        ctx.store, ctx.run, ctx.n_params = store, run, len(params)
        ctx.h_requires_grad = h.requires_grad
        ctx.packed = store.pack(h.detach())
        with torch.no_grad():
            return run(h)

    @staticmethod
    def backward(ctx, grad_out):
        h = ctx.store.unpack(ctx.packed).detach().requires_grad_(ctx.h_requires_grad)
        ctx.packed = None
        with torch.enable_grad():
            out = ctx.run(h)
        torch.autograd.backward(out, grad_out)
        return (None, None, h.grad if ctx.h_requires_grad else None) + (None,) * ctx.n_params


def offloaded(store: HostStore, run, h: torch.Tensor, params) -> torch.Tensor:
    return OffloadedCheckpoint.apply(store, run, h, *params)
