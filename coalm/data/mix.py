"""Mixtures: several row sources -> one de-duplicated, seeded-shuffled training set and a held-out validation split.

Order of operations, chosen so that validation never overlaps training:
1. de-duplicate within and across sources on the exact (instruction, input, output) triple, keeping the first;
2. per source, hold out `val_frac` of the unique rows (seeded) as validation;
3. weight the rest: weight w keeps floor(w) full copies plus a seeded random fraction w - floor(w) of the rows
   (w = 0.5 subsamples half, w = 2 repeats every row twice, w = 0 leaves the source out of training);
4. shuffle the training rows with the seed.
"""

from __future__ import annotations

import math
import random

from engine.data.rows import DataError


def row_key(row: dict) -> tuple[str, str, str]:
    return row["instruction"], row["input"], row["output"]


def dedup(rows: list[dict]) -> tuple[list[dict], int]:
    """(unique rows in first-seen order, number of duplicates removed)."""
    seen, out = set(), []
    for r in rows:
        k = row_key(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out, len(rows) - len(out)


def mix(sources: dict[str, list[dict]], weights: dict[str, float] | None = None, val_frac: float = 0.0,
        seed: int = 0) -> tuple[list[dict], list[dict], dict]:
    """(train rows, validation rows, stats) from {source name: rows}; see the module docstring."""
    weights = dict(weights or {})
    unknown = set(weights) - set(sources)
    if unknown:
        raise DataError(f"weights for unknown source(s) {sorted(unknown)}; sources: {sorted(sources)}")
    for name, w in weights.items():
        if not (isinstance(w, (int, float)) and w >= 0 and math.isfinite(w)):
            raise DataError(f"weight for {name!r} must be a finite number >= 0, got {w!r}")
    if not 0.0 <= val_frac < 1.0:
        raise DataError(f"val_frac must be in [0, 1), got {val_frac}")
    rng = random.Random(seed)
    seen: set = set()
    train, val, stats = [], [], {}
    for name in sorted(sources):  # sorted so the result does not depend on dict order
        uniq = []
        for r in sources[name]:
            k = row_key(r)
            if k not in seen:
                seen.add(k)
                uniq.append(r)
        idx = list(range(len(uniq)))
        rng.shuffle(idx)
        n_val = round(len(uniq) * val_frac)
        v = [uniq[i] for i in sorted(idx[:n_val])]
        rest = [uniq[i] for i in sorted(idx[n_val:])]
        w = weights.get(name, 1.0)
        whole, frac = int(w), w - int(w)
        picked = rest * whole + rng.sample(rest, round(frac * len(rest)))
        train += picked
        val += v
        stats[name] = {"rows": len(sources[name]), "duplicates": len(sources[name]) - len(uniq), "val": len(v),
                       "train": len(picked), "weight": w}
    rng.shuffle(train)
    return train, val, stats
