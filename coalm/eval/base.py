"""What the evaluators share: where benchmark data lives, and how reports are written."""

from __future__ import annotations

import json
import os
from pathlib import Path

from coalm.paths import data_root  # noqa: F401  (re-exported: the one lookup lives in coalm.paths)


class EvalError(Exception):
    """A user-facing problem (missing data, malformed responses file); the CLI prints it and exits 2."""


def benchmark_dir(root: Path, name: str) -> Path:
    d = Path(root) / name
    if not d.is_dir():
        raise EvalError(f"no {name} data under {root} (expected {d}); pass --data-root or set $COALM_DATA")
    return d


def read_jsonl(path: str | os.PathLike, keys: tuple[str, ...] = ()) -> list[dict]:
    """JSON Lines -> the objects, in order. Every malformed line is one EvalError naming file:line.

    Blank lines are skipped. A line that is not JSON, is nested too deep for the parser (RecursionError), is not an
    object, or lacks one of `keys` is reported with its line number; the caller's data is never half-read."""
    path = Path(path)
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise EvalError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                except RecursionError:
                    raise EvalError(f"{path}:{lineno}: JSON nested too deeply to read") from None
                if not isinstance(row, dict):
                    raise EvalError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                missing = [k for k in keys if k not in row]
                if missing:
                    raise EvalError(f"{path}:{lineno}: expected a JSON object with {', '.join(map(repr, keys))}; "
                                    f"missing {', '.join(map(repr, missing))}")
                rows.append(row)
    except UnicodeDecodeError as e:
        raise EvalError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return rows


def write_report(report: dict, path: str | os.PathLike) -> Path:
    """Write atomically, so an interrupted run never leaves half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    tmp.replace(path)
    return path
