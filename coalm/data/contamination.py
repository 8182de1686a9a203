"""Keep benchmark test items out of training data.

The index holds the user queries of the test sets under the data root: BFCL V3 (every `BFCL_v3_*.json` question
turn), API-Bank (the `User` lines of the level-1/level-2 test dialogues) and the MultiWOZ test dialogues (user turns,
even log indices). Text is normalised to lower-case alphanumeric word tokens, so "John 's college ." and
"John's college" compare equal (MultiWOZ's ConvLab-2 copy is pre-tokenised).

A row is contaminated when its instruction + input + output text
- contains any `n`-gram (default 13 words, the GPT-3 decontamination rule) of a test query, or
- contains a whole test query of at least `min_exact` (default 10) words.
Queries shorter than `min_exact` words are not indexed: on the SGD/SNIPS sources, 8-word matches were all generic
dialogue phrases ("thank you very much that's all I need"), not test items.
`filter` checks the instruction and the input + output separately (instructions repeat, so each is checked once);
an n-gram straddling that boundary is not seen.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .rows import DataError

_WORD = re.compile(r"[a-z0-9]+")


def normalise(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(words: list[str], n: int):
    return (tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def benchmark_queries(root: str | Path) -> dict[str, list[str]]:
    """{benchmark: [user query, ...]} for the test sets present under `root` (missing ones are left out)."""
    root = Path(root)
    out: dict[str, list[str]] = {}
    bfcl = sorted((root / "bfcl").glob("BFCL_v3_*.json"))
    if bfcl:
        qs = []
        for p in bfcl:
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    for turn in json.loads(line).get("question", []):
                        qs += [m["content"] for m in turn if m.get("role") == "user" and isinstance(m.get("content"), str)]
        out["bfcl"] = qs
    api = sorted((root / "apibank" / "lv1-lv2-samples").glob("*/*.jsonl"))
    if api:
        qs = []
        for p in api:
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    if rec.get("role") == "User":
                        qs.append(rec["text"])
        out["api-bank"] = qs
    mwz = root / "multiwoz" / "mwz21_test_shared900.json"
    if mwz.is_file():
        data = json.loads(mwz.read_text(encoding="utf-8"))
        out["multiwoz"] = [t["text"] for d in data.values() for t in d["log"][0::2]]
    return out


class ContaminationIndex:
    """n-gram and whole-query index over test-set user queries; `check(row)` names the benchmark a row overlaps."""

    def __init__(self, queries: dict[str, list[str]], n: int = 13, min_exact: int = 10):
        if n < 1 or min_exact < 1:
            raise ValueError(f"n and min_exact must be >= 1, got n={n}, min_exact={min_exact}")
        self.n, self.min_exact = n, min_exact
        self.grams: dict[tuple, str] = {}
        self.exact: dict[tuple, str] = {}
        for bench, qs in queries.items():
            for q in qs:
                w = normalise(q)
                if len(w) < min_exact:
                    continue
                if len(w) < n:
                    self.exact.setdefault(tuple(w), bench)
                for g in _ngrams(w, n):
                    self.grams.setdefault(g, bench)
        self.exact_lengths = sorted({len(k) for k in self.exact})
        self.sizes = {b: len(qs) for b, qs in queries.items()}

    @classmethod
    def from_data_root(cls, root: str | Path, **kw) -> ContaminationIndex:
        queries = benchmark_queries(root)
        if not queries:
            raise DataError(f"no benchmark test sets under {root} (bfcl/, apibank/, multiwoz/) to check against")
        return cls(queries, **kw)

    def check_text(self, text: str) -> str | None:
        w = normalise(text)
        for g in _ngrams(w, self.n):
            if g in self.grams:
                return self.grams[g]
        for k in self.exact_lengths:
            for g in _ngrams(w, k):
                if g in self.exact:
                    return self.exact[g]
        return None

    def check(self, row: dict) -> str | None:
        return self.check_text("\n".join((row["instruction"], row["input"], row["output"])))

    def filter(self, rows: list[dict]) -> tuple[list[dict], dict[str, int]]:
        """(clean rows, {benchmark: rows dropped})."""
        clean, dropped = [], {}
        cache: dict[str, str | None] = {}  # instructions repeat across rows; check each once
        for r in rows:
            ins = r["instruction"]
            if ins not in cache:
                cache[ins] = self.check_text(ins)
            hit = cache[ins] or self.check_text(r["input"] + "\n" + r["output"])
            if hit:
                dropped[hit] = dropped.get(hit, 0) + 1
            else:
                clean.append(r)
        return clean, dropped
