"""Batching of rendered rows: the trainer's per-step micro-batches (`StepBatches`), and padding-free packing into
`max_seq_len` buckets (`pack`, for packing statistics); both build their batches with `make_batch`.

The trainer's batches count rows (examples), as the CoALM paper does: each optimizer step takes `global_batch_size`
rows in a seeded order per epoch (a resumed run sees exactly the data the uninterrupted one would), split into
micro-batches of `micro_batch_size` rows, each packed into one padding-free row.

Buckets are filled first-fit decreasing (rows sorted by length, longest first; each goes into the first bucket
with room), which is within 11/9 of the optimal bucket count. A row is never split; a row longer than
`max_seq_len` raises (render with the same `max_len` first, which truncates or drops and counts). Every input row
lands in exactly one batch.

One batch per bucket, with tensors for a varlen (cu_seqlens) attention kernel:
    input_ids    (1, total) int64   the bucket's rows concatenated, no padding
    labels       (1, total) int64   aligned to input_ids: labels[i] is the target for position i itself (-100 where
                                    no loss); the trainer shifts (logits at i-1 predict labels[i]). Each row starts
                                    with prompt tokens labelled -100, so no loss ever crosses a row boundary.
    position_ids (1, total) int64   0..len-1 restarting for each row (RoPE positions)
    cu_seqlens   (nseq + 1,) int32  row boundaries: row k is [cu_seqlens[k], cu_seqlens[k+1])
    max_seqlen   int                longest row in the bucket
    row_index    list[int]          which input rows the bucket holds, in order

Efficiency = real tokens / (buckets * max_seq_len): the share of a fixed-size (padded) layout that is real data.
"""

from __future__ import annotations

import math
import random

import torch

from .render import IGNORE


def pack_buckets(lengths: list[int], max_seq_len: int) -> list[list[int]]:
    """First-fit decreasing: lists of row indices whose lengths sum to at most `max_seq_len`."""
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    for i, n in enumerate(lengths):
        if n > max_seq_len:
            raise ValueError(f"row {i} has {n} tokens > max_seq_len={max_seq_len}; render with max_len={max_seq_len}")
        if n < 1:
            raise ValueError(f"row {i} is empty")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    buckets: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        # Linear scan; bucket counts stay in the thousands for our data, and this keeps the order deterministic.
        for b, room in enumerate(free):
            if room >= n:
                buckets[b].append(i)
                free[b] -= n
                break
        else:
            buckets.append([i])
            free.append(max_seq_len - n)
    return buckets


def make_batch(rendered: list[tuple[list[int], list[int]]], index: list[int]) -> dict:
    ids, labels, pos, cu = [], [], [], [0]
    for i in index:
        x, y = rendered[i]
        ids += x
        labels += y
        pos += range(len(x))
        cu.append(cu[-1] + len(x))
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([pos], dtype=torch.long),
        "cu_seqlens": torch.tensor(cu, dtype=torch.int32),
        "max_seqlen": max(len(rendered[i][0]) for i in index),
        "row_index": list(index),
        "n_targets": sum(sum(t != IGNORE for t in rendered[i][1]) for i in index),  # tokens that carry loss
    }


class StepBatches:
    """Micro-batches of each optimizer step; `n_targets` of every batch weights its loss within the step."""

    def __init__(self, rendered: list[tuple[list[int], list[int]]], global_batch_size: int, micro_batch_size: int,
                 seed: int = 0):
        if not rendered:
            raise ValueError("no rows to batch")
        self.rendered, self.seed = rendered, seed
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.steps_per_epoch = math.ceil(len(rendered) / global_batch_size)
        self.summary = f"{len(rendered)} rows, {sum(len(x) for x, _ in rendered)} tokens"

    @classmethod
    def from_rows(cls, rows: list[dict], tok, max_seq_len: int, global_batch_size: int, micro_batch_size: int,
                  seed: int = 0, cache_dir=None) -> StepBatches:
        """Render (prompts truncated to max_seq_len; rows whose target cannot fit are dropped and counted), reusing
        the on-disk cache under `cache_dir` when given (coalm.data.cache)."""
        from .cache import render_cached

        rendered, rstats, hit = render_cached(rows, tok, max_seq_len, cache_dir)
        if not rendered:
            raise ValueError(f"no rows left after rendering (all {len(rows)} targets longer than "
                             f"--max-seq-len {max_seq_len}?)")
        self = cls(rendered, global_batch_size, micro_batch_size, seed)
        self.summary += (f" ({rstats.truncated} truncated, {rstats.dropped} dropped: target longer than "
                         f"--max-seq-len {max_seq_len}{'; rendered rows from the cache' if hit else ''})")
        return self

    def total_steps(self, epochs: float, steps: int | None = None) -> int:
        return steps or max(1, math.ceil(epochs * self.steps_per_epoch))

    def step_rows(self, step: int) -> list[list[int]]:
        """Row indices of each micro-batch of optimizer step `step` (0-based)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = list(range(len(self.rendered)))
        random.Random(self.seed * 100003 + epoch).shuffle(order)
        chosen = order[k * self.global_batch_size:(k + 1) * self.global_batch_size]
        return [chosen[i:i + self.micro_batch_size] for i in range(0, len(chosen), self.micro_batch_size)]

    def step(self, step: int) -> list[dict]:
        return [make_batch(self.rendered, idx) for idx in self.step_rows(step)]

    def all_batches(self):
        """Every row once, in order, in micro-batches (validation)."""
        for i in range(0, len(self.rendered), self.micro_batch_size):
            yield make_batch(self.rendered, range(i, min(i + self.micro_batch_size, len(self.rendered))))


def pack(rendered: list[tuple[list[int], list[int]]], max_seq_len: int, seed: int | None = 0) -> tuple[list[dict],
                                                                                                       dict]:
    """(batches, stats). Batches come in a seeded random order (None keeps the packing order)."""
    lengths = [len(x) for x, _ in rendered]
    for i, (x, y) in enumerate(rendered):
        if len(x) != len(y):
            raise ValueError(f"row {i}: {len(x)} input ids but {len(y)} labels")
    buckets = pack_buckets(lengths, max_seq_len)
    if seed is not None:
        random.Random(seed).shuffle(buckets)
    batches = [make_batch(rendered, b) for b in buckets]
    stats = packing_stats(lengths, buckets, max_seq_len)
    stats["target_tokens"] = sum(sum(t != IGNORE for t in y) for _, y in rendered)
    return batches, stats


def packing_stats(lengths: list[int], buckets: list[list[int]], max_seq_len: int) -> dict:
    tokens = sum(lengths)
    return {
        "rows": len(lengths),
        "buckets": len(buckets),
        "tokens": tokens,
        "max_seq_len": max_seq_len,
        "efficiency": tokens / (len(buckets) * max_seq_len) if buckets else 0.0,
    }


def build_batches(rows: list[dict], tok, max_seq_len: int, seed: int | None = 0) -> tuple[list[dict], dict]:
    """Rows -> rendered (truncated to max_seq_len, over-long targets dropped and counted) -> packed batches."""
    from .render import render_rows

    rendered, rstats = render_rows(rows, tok, max_len=max_seq_len)
    batches, stats = pack(rendered, max_seq_len, seed)
    stats.update(input_rows=len(rows), truncated=rstats.truncated, dropped=rstats.dropped,
                 dropped_ids=rstats.dropped_ids)
    return batches, stats
