"""CoALM-IT data: loaders, builders for the three formats, chat rendering with loss masks, packing.

    rows = coalm.data.load("sample")                      # or "sample-eval", or a .jsonl / .parquet path
    batches, stats = coalm.data.build_batches(rows, tok, max_seq_len=2048)

CLI: `python -m coalm.data build|stats|show|sample|download` (see `__main__.py`).
"""

from __future__ import annotations

import os

from .formats import FORMATS, row_format
from .mix import dedup, mix
from .pack import StepBatches, build_batches, pack, pack_buckets
from .render import IGNORE, render_row, render_rows
from .rows import DataError, load_rows, save_rows, validate_row
from .sample import generate_sample, load_sample

__all__ = [
    "FORMATS", "IGNORE", "DataError", "StepBatches", "build_batches", "dedup", "generate_sample", "load", "load_rows",
    "load_sample", "mix", "pack", "pack_buckets", "render_row", "render_rows", "row_format", "save_rows",
    "validate_row",
]


def load(spec: str | os.PathLike, skip_invalid: bool = False, report: dict | None = None) -> list[dict]:
    """Rows from a data spec: "sample" (the embedded train part), "sample-eval", or a .jsonl / .parquet file."""
    if str(spec) == "sample":
        return load_sample("train")
    if str(spec) == "sample-eval":
        return load_sample("eval")
    return load_rows(spec, skip_invalid=skip_invalid, report=report)
