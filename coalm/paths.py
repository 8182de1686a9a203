"""Where data lives on disk: the benchmark / source data root and the cache folder, shared by coalm.data and
coalm.eval (so that neither imports the other for it)."""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """--data-root, else $COALM_DATA, else ../shared/data beside the checkout (or the cwd), else ~/.cache/coalm."""
    if explicit:
        return Path(explicit)
    if os.environ.get("COALM_DATA"):
        return Path(os.environ["COALM_DATA"])
    for cand in (_REPO.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return Path.home() / ".cache" / "coalm"


def cache_dir() -> Path:
    """$COALM_CACHE, else $XDG_CACHE_HOME/coalm, else ~/.cache/coalm (rendered token rows and other caches)."""
    if os.environ.get("COALM_CACHE"):
        return Path(os.environ["COALM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "coalm"
