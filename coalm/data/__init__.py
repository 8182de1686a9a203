"""CoALM-IT data: builders for the three formats, their prompt formats, mixing, the contamination check and the
synthetic generators. Rows, rendering, the render cache and batching are the engine's (`engine.data`), re-exported
here for convenience:

    rows, val_rows = coalm.data.load_train_val(["sample"], val_frac=0.05)   # or .jsonl / .parquet paths
    batches = engine.data.StepBatches.from_rows(rows, tok, max_seq_len=2048, global_batch_size=8, micro_batch_size=8)
    for micro in batches.step(0): ...                     # the Batches engine.train feeds the model at step 0

CLI: `python -m coalm.data build|stats|show|sample|download` (see `__main__.py`).
"""

from __future__ import annotations

from engine.data import (
    IGNORE,
    DataError,
    StepBatches,
    load,
    load_rows,
    load_train_val,
    render_row,
    render_rows,
    save_rows,
    split_rows,
    validate_row,
)

from .formats import FORMATS, row_format
from .mix import dedup, mix
from .sample import generate_sample, load_sample

__all__ = [
    "FORMATS", "IGNORE", "DataError", "StepBatches", "dedup", "generate_sample", "load", "load_rows",
    "load_sample", "load_train_val", "mix", "render_row", "render_rows", "row_format", "save_rows", "split_rows",
    "validate_row",
]
