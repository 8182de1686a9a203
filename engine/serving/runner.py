"""The model side of continuous batching: a slotted KV cache and the two forwards the scheduler needs.

`SlotCache` holds K/V of shape (slots, capacity, n_kv_heads, head_dim) per layer and each slot's filled length.
Running sequences always occupy slots 0..n-1 (the scheduler compacts on exit), so one decode step reads the view
`[:n, :L]` with L the longest running sequence + 1: no gather, and attention costs what the sequences hold, not
what the cache could hold. The capacity grows (doubling, up to the context length) only when a sequence needs it,
and shrinks back when the server is idle.

The model is driven through its public `forward(tokens, positions, cu_seqlens, max_seqlen, cache)`: the views
below expose what `engine.model.Attention` reads from a cache (`k`, `v`, `lengths`, `write`), so the model code
knows nothing of slots. `Runner` methods are the whole model interface of the scheduler; under tensor parallelism
rank 0 broadcasts each call and the other ranks replay it (`engine.serving.tp`).
"""

from __future__ import annotations

import torch


class _View:
    """What the model's attention reads and writes for one forward: K/V views, lengths, write positions."""

    def __init__(self, k, v, lengths, rows, positions):
        self.k, self.v, self.lengths = k, v, lengths
        self._index = (rows.reshape(-1), positions.reshape(-1))

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        self.k[layer].index_put_(self._index, k.reshape(-1, *k.shape[-2:]))
        self.v[layer].index_put_(self._index, v.reshape(-1, *v.shape[-2:]))


class SlotCache:
    def __init__(self, model, slots: int, max_len: int, initial: int = 256):
        a, w = model.args, model.embed_tokens.weight
        self.n_layers, self.head_dim = a.n_layers, a.head_dim
        self.n_kv = model.layers[0].self_attn.k_proj.out_features // a.head_dim  # local heads under TP
        self.slots, self.max_len, self.initial = slots, max_len, min(initial, max_len)
        self.dtype, self.device = w.dtype, w.device
        with torch.inference_mode():  # every cache tensor is an inference tensor: all updates happen in this mode
            self.lengths = torch.zeros(slots, dtype=torch.int32, device=self.device)
            self._alloc(self.initial)

    def _alloc(self, cap: int, keep: int = 0):
        shape = (self.slots, cap, self.n_kv, self.head_dim)
        old = getattr(self, "k", None), getattr(self, "v", None)
        self.k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        self.v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        if keep and old[0] is not None:
            for new, prev in ((self.k, old[0]), (self.v, old[1])):
                for n, p in zip(new, prev):
                    n[:, :keep] = p[:, :keep]
        self.capacity = cap

    def ensure(self, needed: int):
        """Room for `needed` positions in every slot (grows by doubling, never past the context length)."""
        if needed > self.max_len:
            raise ValueError(f"sequence of {needed} positions exceeds the context of {self.max_len}")
        if needed > self.capacity:
            cap = self.capacity
            while cap < needed:
                cap *= 2
            self._alloc(min(cap, self.max_len), keep=self.capacity)

    def move(self, src: int, dst: int):
        n = int(self.lengths[src])
        for kv in (self.k, self.v):
            for t in kv:
                t[dst, :n] = t[src, :n]
        self.lengths[dst] = n

    def reset(self):
        self.lengths.zero_()
        if self.capacity != self.initial:
            self._alloc(self.initial)


class Runner:
    """Prefill new prompts into free slots; decode one token for slots 0..n-1. Returns float logits (rows, vocab)."""

    def __init__(self, model, slots: int, max_len: int):
        self.model = model
        self.device = model.embed_tokens.weight.device
        self.cache = SlotCache(model, slots, max_len)

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], slots: list[int]) -> torch.Tensor:
        c, dev = self.cache, self.device
        lens = torch.tensor([len(p) for p in prompts], dtype=torch.int32, device=dev)
        c.ensure(int(lens.max()))
        tokens = torch.tensor([t for p in prompts for t in p], device=dev)[None]  # (1, total): packed prompts
        cu = torch.zeros(len(prompts) + 1, dtype=torch.int32, device=dev)
        cu[1:] = lens.cumsum(0)
        positions = torch.cat([torch.arange(n, device=dev) for n in lens.tolist()])[None]  # (1, total)
        slot_t = torch.tensor(slots, device=dev)
        rows = torch.repeat_interleave(slot_t, lens.long())
        view = _View(c.k, c.v, None, rows, positions)
        logits = self.model(tokens, positions, cu_seqlens=cu, max_seqlen=int(lens.max()), cache=view, last_only=True)
        c.lengths[slot_t] = lens
        return logits[0]  # (len(prompts), vocab)

    @torch.inference_mode()
    def decode(self, tokens: list[int]) -> torch.Tensor:
        c, n = self.cache, len(tokens)
        lengths = c.lengths[:n]
        longest = int(lengths.max()) + 1
        c.ensure(longest)
        pos = lengths.long()[:, None]  # (n, 1): each sequence's next position
        view = _View([t[:n, :longest] for t in c.k], [t[:n, :longest] for t in c.v], lengths,
                     torch.arange(n, device=self.device), pos)
        tok = torch.tensor(tokens, device=self.device)[:, None]  # (n, 1)
        logits = self.model(tok, pos, cache=view)[:, -1]
        lengths += 1
        return logits

    @torch.inference_mode()
    def move(self, src: int, dst: int):
        self.cache.move(src, dst)

    @torch.inference_mode()
    def reset(self):
        self.cache.reset()
