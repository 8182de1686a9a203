"""The model side of generation: one packed forward over the KV cache per scheduler step.

A step is a list of segments (slot, token ids, first position): a decode step is one token, a prompt chunk is many
(chunked prefill), and both kinds share one forward. The tokens are packed into one (1, total) row with the
positions of each segment (`engine.data.pack_varlen`'s layout: cu_seqlens bound the segments), the cache
(`engine.serving.cache.KVCache`) writes and attends per slot, and the logits come back for each segment's last
token only. `Runner` methods are the whole model interface of the scheduler; under tensor parallelism rank 0
broadcasts each call and the other ranks replay it (`engine.serving.tp`).
"""

from __future__ import annotations

import torch

from .cache import KVCache


class Runner:
    """Opens and closes cache slots and runs steps; `forward` returns float logits (segments, vocab)."""

    def __init__(self, model, max_len: int, kv_budget_bytes: int | None = None):
        self.model = model
        self.device = model.embed_tokens.weight.device
        self.cache = KVCache(model, max_len, kv_budget_bytes)

    @torch.inference_mode()
    def forward(self, segments: list[tuple[int, list[int], int]]) -> torch.Tensor:
        dev = self.device
        lens = [len(ids) for _, ids, _ in segments]
        tokens = torch.tensor([t for _, ids, _ in segments for t in ids], device=dev)[None]  # (1, total)
        positions = torch.cat([torch.arange(p, p + n) for (_, _, p), n in zip(segments, lens)]).to(dev)[None]
        cu = torch.zeros(len(segments) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(lens).cumsum(0)
        self.cache.plan([(slot, p, n) for (slot, _, p), n in zip(segments, lens)])
        try:
            logits = self.model(tokens, positions, cu_seqlens=cu.to(dev), max_seqlen=max(lens), cache=self.cache,
                                last_only=True)
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
