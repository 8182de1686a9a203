"""The one KV cache of the engine (serving and offline generation): per slot, head-major, grown per slot, budgeted.

Each slot owns one tensor (n_layers, 2, n_kv_heads, capacity, head_dim): for a layer, K and V of a sequence are
(n_kv_heads, tokens, head_dim), contiguous per head, which is what attention reads without a transpose. A slot is
allocated when its sequence is admitted, with room for its prompt and a first stretch of its answer, and it grows
(by a quarter, at least `GROW`) only when that sequence needs it, up to what the sequence reserved (prompt +
max_tokens), so one long prompt never grows the other slots. Admission reserves bytes against a budget
(`--kv-cache-memory`); a request that does not fit waits. Tensors are `torch.empty`: pages are touched only as
tokens are written, so resident memory follows what the sequences hold.

A forward over the cache is packed: (1, total) tokens made of segments (slot, first position, n tokens): decode
steps (n = 1) and prompt chunks (chunked prefill) alike. `plan` records the segments; the model's attention calls
`attend(layer, q, k, v)`, which writes each segment's K/V into its slot and attends its queries to the slot's
filled prefix (`coalm_kernels.flash_attn_cpu.cache_attention`: no mask and no padding at q_len = 1).
"""

from __future__ import annotations

import math

import torch

from coalm_kernels.flash_attn_cpu import cache_attention

GROW = 64  # tokens: the smallest growth step of a slot, and the answer room allocated at admission


def default_budget(device) -> int:
    """Half the memory free now on `device` (CUDA: the free device memory; CPU: MemAvailable)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 8 << 30  # no /proc/meminfo (not Linux): a fixed 8 GiB


class KVCache:
    def __init__(self, model, max_len: int, budget_bytes: int | None = None):
        a, w = model.args, model.embed_tokens.weight
        self.n_layers, self.head_dim, self.max_len = a.n_layers, a.head_dim, max_len
        self.n_kv = model.layers[0].self_attn.k_proj.out_features // a.head_dim  # local heads under TP
        self.dtype, self.device = w.dtype, w.device
        self.bytes_per_token = self.n_layers * 2 * self.n_kv * self.head_dim * w.element_size()
        self.budget = default_budget(self.device) if budget_bytes is None else int(budget_bytes)
        self.store: dict[int, torch.Tensor] = {}  # slot -> (n_layers, 2, n_kv, capacity, head_dim)
        self.lengths: dict[int, int] = {}  # slot -> filled positions
        self.reserved: dict[int, int] = {}  # slot -> most positions it may ever hold
        self._segs: list[tuple[int, int, int]] = []
        self.scale = 1.0 / math.sqrt(a.head_dim)

    # ---------------------------------------------------------------------------------------------- slots, memory
    def need_bytes(self, tokens: int) -> int:
        return tokens * self.bytes_per_token

    def used_bytes(self) -> int:
        """Bytes reserved by the admitted sequences (what admission counts, not what is allocated yet)."""
        return self.need_bytes(sum(self.reserved.values()))

    def fits(self, tokens: int) -> bool:
        return self.used_bytes() + self.need_bytes(tokens) <= self.budget

    def open(self, slot: int, prompt_len: int, reserve: int):
        """Allocate `slot` for a sequence of `prompt_len` prompt tokens that may reach `reserve` positions."""
        if reserve > self.max_len:
            raise ValueError(f"sequence of {reserve} positions exceeds the context of {self.max_len}")
        self.reserved[slot], self.lengths[slot] = reserve, 0
        self.store[slot] = self._empty(min(reserve, prompt_len + GROW))

    def close(self, slot: int):
        for d in (self.store, self.lengths, self.reserved):
            d.pop(slot, None)

    def reset(self):
        self.store.clear(), self.lengths.clear(), self.reserved.clear()

    def capacity(self, slot: int) -> int:
        return self.store[slot].shape[3]

    def _empty(self, cap: int) -> torch.Tensor:
        return torch.empty(self.n_layers, 2, self.n_kv, cap, self.head_dim, dtype=self.dtype, device=self.device)

    def _ensure(self, slot: int, needed: int):
        if needed > self.reserved[slot]:
            raise ValueError(f"slot {slot}: {needed} positions exceed the {self.reserved[slot]} it reserved")
        cap = self.capacity(slot)
        if needed > cap:
            new = self._empty(min(self.reserved[slot], max(needed, cap + max(GROW, cap // 4))))
            n = self.lengths[slot]
            new[:, :, :, :n] = self.store[slot][:, :, :, :n]
            self.store[slot] = new

    # ------------------------------------------------------------------------------------------- one forward
    def plan(self, segments: list[tuple[int, int, int]]):
        """The next forward's segments (slot, first position, n tokens), in packed order; grows slots as needed."""
        for slot, start, n in segments:
            if start != self.lengths[slot]:
                raise ValueError(f"slot {slot}: writing at {start} but it holds {self.lengths[slot]} positions")
            self._ensure(slot, start + n)
        self._segs = segments

    def advance(self):
        """After the forward: the segments' tokens are now part of their slots."""
        for slot, start, n in self._segs:
            self.lengths[slot] = start + n
        self._segs = []

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (1, total, Hq, D), k/v (1, total, Hkv, D) of the planned segments -> attention output like q."""
        outs, off = [], 0
        for slot, start, n in self._segs:
            kv = self.store[slot][layer]  # (2, Hkv, capacity, D)
            end = start + n
            kv[0, :, start:end] = k[0, off:off + n].transpose(0, 1)
            kv[1, :, start:end] = v[0, off:off + n].transpose(0, 1)
            outs.append(cache_attention(q[0, off:off + n], kv[0, :, :end], kv[1, :, :end], self.scale))
            off += n
        return (outs[0] if len(outs) == 1 else torch.cat(outs))[None]
