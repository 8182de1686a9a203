"""Alpaca rows on disk: load and save parquet / JSONL with the columns `instruction`, `input`, `output`.

A row is `{"instruction": str, "input": str, "output": str}`, optionally with a `meta` dict (format, source, ids:
whatever the program that built the rows records). Parquet files we write store `meta` as a JSON string column; the
loader accepts it either way. Any other column is an error.

A data spec (`--data`) is a .jsonl / .parquet path, or "sample" / "sample-eval": the small embedded data set in
`engine/data/sample/` (train and held-out parts; written by `python -m coalm.data sample`), so that
`python -m engine.train` runs with no data of one's own.

Invalid rows (a missing or non-string field, an empty output) raise `DataError` naming the file and the 1-based row
number; with `skip_invalid=True` they are dropped and counted per reason in the `report` dict the caller passes.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

COLUMNS = ("instruction", "input", "output")
OPTIONAL = ("meta",)
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SAMPLES = {"sample": "train.jsonl", "sample-eval": "eval.jsonl"}  # data spec -> file in SAMPLE_DIR


class DataError(Exception):
    """A user-facing data problem (bad file, bad row, unknown source); the CLI prints it and exits 2."""


def validate_row(row) -> str | None:
    """The reason a row is invalid, or None when it is a valid row."""
    if not isinstance(row, dict):
        return f"not an object ({type(row).__name__})"
    for k in COLUMNS:
        if k not in row or row[k] is None:
            return f"missing field {k!r}"
        if not isinstance(row[k], str):
            return f"field {k!r} is {type(row[k]).__name__}, not a string"
    if not row["output"].strip():
        return "empty output"
    extra = set(row) - set(COLUMNS) - set(OPTIONAL)
    if extra:
        return f"unknown field(s) {sorted(extra)} (valid: {list(COLUMNS + OPTIONAL)})"
    if "meta" in row and row["meta"] is not None and not isinstance(row["meta"], dict):
        return "field 'meta' is not an object"
    return None


def _records(path: Path):
    """Yield (row number, record-or-exception) from a JSONL or parquet file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with open(path, "rb") as f:  # bytes, decoded per line: a non-UTF-8 byte is reported with its row number
            for i, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}: row {i}: not UTF-8 text ({e.reason} at byte {e.start}); convert the "
                                    f"file to UTF-8") from None
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    yield i, DataError(f"not valid JSON ({e.msg})")
                except RecursionError:  # e.g. 100,000 '[': the parser recurses once per level
                    yield i, DataError("JSON nested too deeply to read")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{path}: cannot read parquet ({e})") from e
        extra = set(table.column_names) - set(COLUMNS) - set(OPTIONAL)
        if extra:
            raise DataError(f"{path}: unknown column(s) {sorted(extra)}; valid: {list(COLUMNS + OPTIONAL)}")
        for i, rec in enumerate(table.to_pylist(), 1):
            if isinstance(rec.get("meta"), str):
                try:
                    rec["meta"] = json.loads(rec["meta"])
                except json.JSONDecodeError:
                    yield i, DataError("column 'meta' is not valid JSON")
                    continue
            if "meta" in rec and rec["meta"] is None:
                del rec["meta"]
            yield i, rec
    else:
        raise DataError(f"{path}: unknown file type {suffix!r}; use .jsonl or .parquet")


def load_rows(path: str | os.PathLike, skip_invalid: bool = False, report: dict | None = None) -> list[dict]:
    """Read Alpaca rows from `.jsonl` or `.parquet`.

    Raises DataError at the first invalid row (file and row number in the message) unless `skip_invalid`; then the
    invalid rows are dropped and `report` (when given) receives {"skipped": n, "reasons": {reason: count}}.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows, reasons = [], Counter()
    for i, rec in _records(path):
        why = str(rec) if isinstance(rec, DataError) else validate_row(rec)
        if why is None:
            rows.append(rec)
        elif skip_invalid:
            reasons[why] += 1
        else:
            raise DataError(f"{path}: row {i}: {why} (pass skip_invalid=True / --skip-invalid to drop such rows)")
    if report is not None:
        report.update(skipped=sum(reasons.values()), reasons=dict(reasons))
    return rows


def save_rows(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write rows as JSONL or parquet (by extension), validating each first; written atomically."""
    path = Path(path)
    for i, r in enumerate(rows, 1):
        why = validate_row(r)
        if why:
            raise DataError(f"refusing to write {path}: row {i}: {why}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {k: [r[k] for r in rows] for k in COLUMNS}
        if any(r.get("meta") for r in rows):
            cols["meta"] = [json.dumps(r["meta"], ensure_ascii=False) if r.get("meta") else None for r in rows]
        pq.write_table(pa.table({k: pa.array(v, type=pa.string()) for k, v in cols.items()}), tmp)
    else:
        raise DataError(f"{path}: unknown file type {suffix!r}; use .jsonl or .parquet")
    tmp.replace(path)
    return path


def split_rows(rows: list[dict], val_frac: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, validation): a seeded random `val_frac` of the rows held out. Refuses a split that leaves either
    side empty."""
    import random

    n_val = round(len(rows) * val_frac)
    if n_val < 1 or n_val >= len(rows):
        raise DataError(f"--val-frac {val_frac} of {len(rows)} rows leaves {len(rows) - n_val} training and {n_val} "
                        f"validation rows; both need at least one")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def load(spec: str | os.PathLike, skip_invalid: bool = False, report: dict | None = None) -> list[dict]:
    """Rows from a data spec: "sample" (the embedded train part), "sample-eval", or a .jsonl / .parquet file."""
    if str(spec) in SAMPLES:
        path = SAMPLE_DIR / SAMPLES[str(spec)]
        if not path.is_file():
            raise DataError(f"embedded sample missing at {path}; regenerate it with `python -m coalm.data sample "
                            f"--out {SAMPLE_DIR / SAMPLES['sample']}`")
        return load_rows(path)
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
