"""CoALM-IT data: loaders, builders for the three formats, chat rendering with loss masks, batching.

    rows, val_rows = coalm.data.load_train_val(["sample"], val_frac=0.05)   # or .jsonl / .parquet paths
    batches = coalm.data.StepBatches.from_rows(rows, tok, max_seq_len=2048, global_batch_size=8, micro_batch_size=8)
    for micro in batches.step(0): ...                     # what engine.train feeds the model at step 0

`pack` / `build_batches` (first-fit-decreasing buckets) measure packing efficiency for `python -m coalm.data stats`;
training batches come from `StepBatches` alone.

CLI: `python -m coalm.data build|stats|show|sample|download` (see `__main__.py`).
"""

from __future__ import annotations

import os

from .formats import FORMATS, row_format
from .mix import dedup, mix
from .pack import StepBatches, build_batches, pack, pack_buckets
from .render import IGNORE, render_row, render_rows
from .rows import DataError, load_rows, save_rows, split_rows, validate_row
from .sample import generate_sample, load_sample

__all__ = [
    "FORMATS", "IGNORE", "DataError", "StepBatches", "build_batches", "dedup", "generate_sample", "load", "load_rows",
    "load_sample", "load_train_val", "mix", "pack", "pack_buckets", "render_row", "render_rows", "row_format",
    "save_rows", "split_rows", "validate_row",
]


def load(spec: str | os.PathLike, skip_invalid: bool = False, report: dict | None = None) -> list[dict]:
    """Rows from a data spec: "sample" (the embedded train part), "sample-eval", or a .jsonl / .parquet file."""
    if str(spec) == "sample":
        return load_sample("train")
    if str(spec) == "sample-eval":
        return load_sample("eval")
    return load_rows(spec, skip_invalid=skip_invalid, report=report)


def load_train_val(specs: list[str], val_data: str | None = None, val_frac: float = 0.0, seed: int = 0,
                   skip_invalid: bool = False, log=print) -> tuple[list[dict], list[dict]]:
    """(training rows, validation rows) from data specs: `val_data` read as its own file, or a seeded `val_frac`
    of the training rows held out (refused when either side would be empty); no validation rows otherwise."""
    def read(spec_list):
        rows = []
        for spec in spec_list:
            report: dict = {}
            rows += load(spec, skip_invalid=skip_invalid, report=report)
            if report.get("skipped"):
                log(f"{spec}: skipped {report['skipped']} invalid rows: {report.get('reasons', {})}")
        if not rows:
            raise DataError(f"no valid rows in {', '.join(map(str, spec_list))}")
        return rows

    rows = read(specs)
    if val_data:
        return rows, read([val_data])
    if val_frac:
        return split_rows(rows, val_frac, seed)
    return rows, []
