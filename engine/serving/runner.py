"""The model side of generation: one packed forward over the KV cache per scheduler step.

A step is a list of segments (slot, token ids, first position): a decode step is one token, a prompt chunk is many
(chunked prefill), and both kinds share one forward. The segments are packed into one (1, total) row by
`engine.data.pack_varlen` (the packer of training too), their positions shifted to where each segment starts, the cache
(`engine.serving.cache.KVCache`) writes and attends per slot, and the logits come back for each segment's last
token only. `Runner` methods are the whole model interface of the scheduler; under tensor parallelism rank 0
broadcasts each call and the other ranks replay it (`engine.serving.tp`).
"""

from __future__ import annotations

import torch

from ..data.pack import pack_varlen
from .cache import KVCache


class Runner:
    """Opens and closes cache slots and runs steps; `forward` returns float logits (segments, vocab)."""

    def __init__(self, model, max_len: int, kv_budget_bytes: int | None = None):
        self.model = model
        self.device = model.embed_tokens.weight.device
        self.cache = KVCache(model, max_len, kv_budget_bytes)

    @torch.inference_mode()
    def forward(self, segments: list[tuple[int, list[int], int]]) -> torch.Tensor:
        b = pack_varlen([ids for _, ids, _ in segments])  # (1, total), positions restarting at 0 per segment
        lens = b.seq_lens()
        starts = torch.tensor([p for _, _, p in segments])
        positions = b.position_ids + torch.repeat_interleave(starts, lens.long())[None]
        self.cache.plan([(slot, p, n) for (slot, _, p), n in zip(segments, lens.tolist())])
        dev = self.device
        try:
            logits = self.model(b.input_ids.to(dev), positions.to(dev), cu_seqlens=b.cu_seqlens.to(dev),
                                max_seqlen=b.max_seqlen, cache=self.cache, last_only=True)
        except BaseException:
            self.cache._segs = []
            raise
        self.cache.advance()
        return logits[0]  # (segments, vocab)

    @torch.inference_mode()
    def open(self, slot: int, prompt_len: int, reserve: int):
        self.cache.open(slot, prompt_len, reserve)

    def close(self, slot: int):
        self.cache.close(slot)

    def reset(self):
        self.cache.reset()
