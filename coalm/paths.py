"""Where data lives on disk: the benchmark / source data root, shared by coalm.data and coalm.eval (so that neither
imports the other for it). The cache folder is the engine's (`engine.data.cache_dir`)."""

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
