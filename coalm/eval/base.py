"""What the evaluators share: where benchmark data lives, and how reports are written."""

from __future__ import annotations

import json
import os
from pathlib import Path

from coalm.paths import data_root  # noqa: F401  (re-exported: the one lookup lives in coalm.paths)


class EvalError(Exception):
    """A user-facing problem (missing data, malformed responses file); the CLI prints it and exits 2."""


class ItemError(Exception):
    """One item's failure to generate (an endpoint's error after its retries), returned by a backend's `chat` in
    that conversation's place: the runner records it as that item's error and the run goes on."""


def benchmark_dir(root: Path, name: str) -> Path:
    d = Path(root) / name
    if not d.is_dir():
        raise EvalError(f"no {name} data under {root} (expected {d}); pass --data-root or set $COALM_DATA")
    return d


def loads_json(text: str, where: str, whole_file: bool = False):
    """json.loads with every way hostile input fails (bad JSON, an integer past Python's 4,300-digit conversion
    limit, nesting deeper than the parser's recursion) turned into one EvalError line naming `where` (and, for a
    whole file, the line of a syntax error)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise EvalError(f"{where}{f':{e.lineno}' if whole_file else ''}: not valid JSON ({e.msg})") from None
    except ValueError as e:
        raise EvalError(f"{where}: not valid JSON ({clip(str(e), 100)})") from None
    except RecursionError:
        raise EvalError(f"{where}: JSON nested too deeply to read") from None


def read_jsonl_lines(path: str | os.PathLike, keys: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """JSON Lines -> (line number, object) pairs, in order. Every malformed line is one EvalError naming file:line.

    Blank lines are skipped. A line that is not JSON, is nested too deep for the parser (RecursionError), is not an
    object, or lacks one of `keys` is reported with its line number; the caller's data is never half-read."""
    path = Path(path)
    rows = []
    lineno = 0
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = loads_json(line, f"{path}:{lineno}")
                if not isinstance(row, dict):
                    raise EvalError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                missing = [k for k in keys if k not in row]
                if missing:
                    raise EvalError(f"{path}:{lineno}: expected a JSON object with {', '.join(map(repr, keys))}; "
                                    f"missing {', '.join(map(repr, missing))}")
                rows.append((lineno, row))
    except UnicodeDecodeError as e:
        raise EvalError(f"{path}:{lineno + 1}: not UTF-8 text ({e.reason})") from None
    return rows


def read_jsonl(path: str | os.PathLike, keys: tuple[str, ...] = ()) -> list[dict]:
    """JSON Lines -> the objects (see `read_jsonl_lines`)."""
    return [row for _, row in read_jsonl_lines(path, keys)]


def json_text(obj, **kwargs) -> str:
    """json.dumps with readable non-ASCII text; lone surrogates (which UTF-8 cannot hold) stay JSON escapes."""
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def clip(text: str, limit: int = 300) -> str:
    """At most `limit` characters of `text`, saying how long it was: reports never echo a huge model output."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def brief(value, limit: int = 200) -> str:
    """repr() of a value taken from model output, bounded in size; safe for ints too long to print."""
    try:
        text = repr(value)
    except Exception as e:  # noqa: BLE001 - e.g. an int past Python's 4300-digit str conversion limit
        bits = f"{value.bit_length()} bits" if isinstance(value, int) else type(e).__name__
        text = f"<{type(value).__name__} of {bits}>"
    return clip(text, limit)


def plain(obj, depth: int = 0):
    """A copy of `obj` that JSON can always hold: ints too long to print, sets, tuples and other objects become
    short strings or lists; nesting is cut at 64 levels (reports must be written whatever a scorer put in them)."""
    if depth > 64:
        return "<nested too deeply>"
    if obj is None or isinstance(obj, (str, bool, float)):
        return obj
    if isinstance(obj, int):
        try:
            str(obj)
        except ValueError:  # more digits than sys.get_int_max_str_digits()
            return f"<int of {obj.bit_length()} bits>"
        return obj
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else str(plain(k, depth + 1)): plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return [plain(v, depth + 1) for v in sorted(obj, key=repr)]
    if isinstance(obj, (list, tuple)):
        return [plain(v, depth + 1) for v in obj]
    return repr(obj)[:200]


def write_report(report: dict, path: str | os.PathLike) -> Path:
    """Write atomically, so an interrupted run never leaves half a report (nor a stray temporary file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json_text(plain(report), indent=1), encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
