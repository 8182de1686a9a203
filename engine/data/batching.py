"""The trainer's micro-batches: each optimizer step's rows, this data-parallel rank's share of them, packed
into `Batch`es (`pack_varlen`), with the loss weights of the whole step.

The batches count rows (examples), as the CoALM paper does: each optimizer step takes `global_batch_size` rows in
a seeded order per epoch (a function of the step alone, so a resumed run sees exactly the data the uninterrupted
one would), split into micro-batches of `micro_batch_size` rows, each packed into one padding-free row. Under data
parallelism (`engine.parallel.data_parallel.dp_rows`) each rank takes a contiguous share of the step's rows.

A step's loss is the mean over all its target tokens: a micro-batch's `weight` is its share of them,
`n_targets / the step's n_targets` (counted over every rank's rows, so no collective is needed), and the trainer
backpropagates `loss * weight`. Under FSDP every rank must run as many forwards as the busiest one (each is a
collective); the extra micro-batches (`dp_pad`) are copies of a real one with weight 0.
"""

from __future__ import annotations

import math
import random

from .pack import IGNORE, Batch, pack_varlen

Rendered = list[tuple[list[int], list[int]]]  # (input_ids, labels) per row, as engine.data.render makes them


class StepBatches:
    """The micro-batches of each optimizer step over rendered rows."""

    def __init__(self, rendered: Rendered, global_batch_size: int, micro_batch_size: int, seed: int = 0):
        if not rendered:
            raise ValueError("no rows to batch")
        if global_batch_size < 1 or micro_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got global {global_batch_size}, micro {micro_batch_size}")
        self.rendered, self.seed = rendered, seed
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.steps_per_epoch = math.ceil(len(rendered) / global_batch_size)
        # targets per row as the shifted loss counts them (not a sequence's first position)
        self._targets = [sum(t != IGNORE for t in y[1:]) for _, y in rendered]
        self.summary = f"{len(rendered)} rows, {sum(len(x) for x, _ in rendered)} tokens"

    @classmethod
    def from_rows(cls, rows: list[dict], tok, max_seq_len: int, global_batch_size: int, micro_batch_size: int,
                  seed: int = 0, cache_dir=None) -> StepBatches:
        """Render (prompts truncated to max_seq_len; rows whose target cannot fit are dropped and counted), reusing
        the on-disk cache under `cache_dir` when given (engine.data.cache)."""
        from .cache import render_cached

        rendered, rstats, hit = render_cached(rows, tok, max_seq_len, cache_dir)
        if not rendered:
            raise ValueError(f"no rows left after rendering (all {len(rows)} targets longer than "
                             f"--max-seq-len {max_seq_len}?)")
        self = cls(rendered, global_batch_size, micro_batch_size, seed)
        self.render_stats = rstats
        self.summary += (f" ({rstats.truncated} truncated, {rstats.dropped} dropped: target longer than "
                         f"--max-seq-len {max_seq_len}{'; rendered rows from the cache' if hit else ''})")
        return self

    def total_steps(self, epochs: float, steps: int | None = None) -> int:
        return steps or max(1, math.ceil(epochs * self.steps_per_epoch))

    def step_rows(self, step: int) -> list[list[int]]:
        """Row indices of each (single-process) micro-batch of optimizer step `step` (0-based)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = list(range(len(self.rendered)))
        random.Random(self.seed * 100003 + epoch).shuffle(order)
        chosen = order[k * self.global_batch_size:(k + 1) * self.global_batch_size]
        return [chosen[i:i + self.micro_batch_size] for i in range(0, len(chosen), self.micro_batch_size)]

    def rank_rows(self, step: int, mesh=None) -> list[list[int]]:
        """Row indices of this DP rank's micro-batches of `step` (all of them with no mesh or dp = 1)."""
        from ..parallel.data_parallel import dp_rows

        rows = self.step_rows(step)
        return rows if mesh is None else dp_rows(rows, mesh, self.micro_batch_size)

    def step(self, step: int, mesh=None, pad: bool = False) -> list[Batch]:
        """This DP rank's micro-batches of `step`, each weighted by its share of the whole step's targets; with
        `pad` (FSDP), followed by as many zero-weight copies as make every rank run the same count (`dp_pad`)."""
        from ..parallel.data_parallel import dp_pad

        all_rows = self.step_rows(step)
        total = max(1, sum(self._targets[i] for mb in all_rows for i in mb))
        out = [self.batch(idx, total) for idx in self.rank_rows(step, mesh)]
        if pad and mesh is not None:
            n = dp_pad(all_rows, mesh, self.micro_batch_size)
            if n:
                out += [self.batch(all_rows[0][:1]).as_padding()] * n
        return out

    def batch(self, index, total_targets: int | None = None) -> Batch:
        """Rows `index` packed into one Batch; weight n_targets / total_targets (1 when no total is given)."""
        b = pack_varlen([self.rendered[i][0] for i in index], [self.rendered[i][1] for i in index])
        b.weight = 1.0 if total_targets is None else b.n_targets / total_targets
        return b

    def all_batches(self):
        """Every row once, in order, in micro-batches (validation)."""
        for i in range(0, len(self.rendered), self.micro_batch_size):
            yield self.batch(range(i, min(i + self.micro_batch_size, len(self.rendered))))

    def stats(self, steps: int, mesh=None) -> dict:
        """What the trainer runs over `steps` steps: micro-batch count and sizes (tokens per packed row)."""
        sizes = [b.num_tokens for s in range(steps) for b in self.step(s, mesh)]
        return {"rows": len(self.rendered), "tokens": sum(len(x) for x, _ in self.rendered),
                "target_tokens": sum(self._targets), "steps": steps, "steps_per_epoch": self.steps_per_epoch,
                "micro_batches": len(sizes), "micro_batch_tokens": {
                    "min": min(sizes), "mean": sum(sizes) / len(sizes), "max": max(sizes)}}
