"""Tensor-parallel serving: rank 0 runs the HTTP server and the scheduler; every other rank replays its model calls.

Each `Runner` call (forward, open, close, reset) is broadcast from rank 0 before rank 0 runs it, so all ranks run
the same forwards in the same order and the collectives inside the tensor-parallel model line up; each rank keeps
its own KV cache of its local heads. The logits are complete on every rank (the parallel model gathers them); only
rank 0 samples. When idle, the scheduler's loop calls `reset` about twice a second, which keeps the followers'
collectives well inside the process group's timeout.
"""

from __future__ import annotations

import torch.distributed as dist


class LeadRunner:
    def __init__(self, runner):
        self.runner, self.device = runner, runner.device
        self.model, self.cache = runner.model, runner.cache  # read by the scheduler (vocab, budget); never mutated

    def _call(self, name: str, *args):
        dist.broadcast_object_list([(name, args)], src=0)
        return getattr(self.runner, name)(*args)

    def forward(self, segments):
        return self._call("forward", segments)

    def open(self, slot, prompt_len, reserve):
        return self._call("open", slot, prompt_len, reserve)

    def close(self, slot):
        return self._call("close", slot)

    def reset(self):
        return self._call("reset")

    def release_followers(self):
        dist.broadcast_object_list([("stop", ())], src=0)


def follow_or_lead(runner):
    """Rank 0: a LeadRunner. Other ranks: replay rank 0's calls until it stops, then return None."""
    if dist.get_rank() == 0:
        return LeadRunner(runner)
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        name, args = box[0]
        if name == "stop":
            return None
        getattr(runner, name)(*args)
