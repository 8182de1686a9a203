"""Fine-tuning data, knowing nothing of any one data set: Alpaca rows (`rows`), chat rendering with a loss mask
(`render`), the render cache (`cache`), and the trainer's micro-batches (`batching`), packed into `Batch`es by
`pack_varlen` (`pack`: the one packer, also shaped for the prefill of generation and serving).

    rows, val_rows = engine.data.load_train_val(["sample"], val_frac=0.05)   # or .jsonl / .parquet paths
    batches = engine.data.StepBatches.from_rows(rows, tok, max_seq_len=2048, global_batch_size=8, micro_batch_size=8)
    for micro in batches.step(0, mesh): ...           # this DP rank's Batches of step 0
"""

from __future__ import annotations

from .batching import StepBatches
from .cache import cache_dir, render_cached
from .pack import IGNORE, Batch, pack_varlen
from .render import RenderStats, render_row, render_rows
from .rows import DataError, load, load_rows, load_train_val, save_rows, split_rows, validate_row

__all__ = [
    "IGNORE", "Batch", "DataError", "RenderStats", "StepBatches", "cache_dir", "load", "load_rows", "load_train_val",
    "pack_varlen", "render_cached", "render_row", "render_rows", "save_rows", "split_rows", "validate_row",
]
