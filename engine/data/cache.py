"""Rendered token rows cached on disk, so that `--resume` and a second run on the same data skip rendering.

The key is a SHA-256 over the rows' contents (what the data files yielded after validation and any split), the
tokenizer (its serialized vocabulary where the backend has one, chat template, special tokens, and the ids of a
probe text) and `max_len`. Entries are `.npz` files (ids, labels and row lengths as int32 arrays, read with
allow_pickle=False) plus a small JSON of the render statistics, under `cache_dir() / "rendered"`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .render import RenderStats, render_rows


def cache_dir() -> Path:
    """$COALM_CACHE, else $XDG_CACHE_HOME/coalm, else ~/.cache/coalm (the project's cache folder)."""
    if os.environ.get("COALM_CACHE"):
        return Path(os.environ["COALM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "coalm"


_PROBE = "Héllo wörld 123 — {\"name\": \"f\", \"arguments\": {}}\n\tAction: g(a='1')  ok?"
_CHUNK = 2000


def tokenizer_fingerprint(tok) -> str:
    h = hashlib.sha256()
    to_str = getattr(getattr(tok, "_backend", None), "to_str", None)  # `tokenizers` backends serialize themselves
    if to_str is not None:
        h.update(to_str().encode())
    h.update(json.dumps([tok.vocab_size, tok.chat_template, sorted(tok.special.items()), tok.encode(_PROBE),
                         tok.eot_id]).encode())
    return h.hexdigest()


def rows_key(rows: list[dict], tok, max_len: int | None) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["instruction"], r["input"], r["output"]], ensure_ascii=False).encode())
        h.update(b"\x00")
    h.update(f"{tokenizer_fingerprint(tok)}|{max_len}".encode())
    return h.hexdigest()


def _render_with_progress(rows, tok, max_len):
    from tqdm import tqdm

    stats, out = RenderStats(), []
    for i in tqdm(range(0, len(rows), _CHUNK), desc="rendering", unit_scale=_CHUNK, leave=False,
                  disable=len(rows) <= _CHUNK):
        part, s = render_rows(rows[i:i + _CHUNK], tok, max_len)
        out += part
        stats.rendered += s.rendered
        stats.truncated += s.truncated
        stats.dropped += s.dropped
        stats.dropped_ids += s.dropped_ids
    return out, stats


def render_cached(rows: list[dict], tok, max_len: int | None, cache_dir: Path | None = None
                  ) -> tuple[list[tuple[list[int], list[int]]], RenderStats, bool]:
    """(rendered, stats, hit). `cache_dir` None renders without the cache."""
    if cache_dir is None:
        return (*_render_with_progress(rows, tok, max_len), False)
    key = rows_key(rows, tok, max_len)
    path = Path(cache_dir) / "rendered" / f"{key}.npz"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                ids, labels, lens = z["ids"].tolist(), z["labels"].tolist(), z["lengths"].tolist()
            stats = RenderStats(**json.loads(meta_path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged entry (e.g. a run killed mid-write): render again and replace it
        else:
            out, k = [], 0
            for n in lens:
                out.append((ids[k:k + n], labels[k:k + n]))
                k += n
            return out, stats, True
    rendered, stats = _render_with_progress(rows, tok, max_len)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{key}.{os.getpid()}.tmp.npz")
    np.savez(tmp, ids=np.array([t for x, _ in rendered for t in x], dtype=np.int32),
             labels=np.array([t for _, y in rendered for t in y], dtype=np.int32),
             lengths=np.array([len(x) for x, _ in rendered], dtype=np.int64))
    meta_path.write_text(json.dumps({"rendered": stats.rendered, "truncated": stats.truncated,
                                     "dropped": stats.dropped, "dropped_ids": stats.dropped_ids}))
    os.replace(tmp, path)  # the npz last: an entry is complete once it exists
    return rendered, stats, False
