"""Keep benchmark test items out of training data: an index over test-set user queries that are given to it.

The queries come from the evaluators, each of which knows its own test files (`test_queries(root)` in
`coalm.eval.bfcl`, `coalm.eval.api_bank`, `coalm.eval.multiwoz`), so no benchmark layout is written twice. This
module never imports them (coalm.data sits below coalm.eval): callers above both (`coalm.agent`) pass the query
lists in, and `python -m coalm.data build` finds the evaluators through the `coalm.test_queries` entry-point group
they register in pyproject.toml (`query_providers`). Text is normalised to lower-case alphanumeric word tokens, so
"John 's college ." and "John's college" compare equal (MultiWOZ's ConvLab-2 copy is pre-tokenised).

A row is contaminated when its instruction + input + output text
- contains any `n`-gram (default 13 words, the GPT-3 decontamination rule) of a test query, or
- contains a whole test query of at least `min_exact` (default 10) words.
Queries shorter than `min_exact` words are not indexed: on the SGD/SNIPS sources, 8-word matches were all generic
dialogue phrases ("thank you very much that's all I need"), not test items.
`filter` checks the instruction and the input + output separately (instructions repeat, so each is checked once);
an n-gram straddling that boundary is not seen.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from engine.data.rows import DataError

_WORD = re.compile(r"[a-z0-9]+")
ENTRY_POINT_GROUP = "coalm.test_queries"


def normalise(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(words: list[str], n: int):
    return (tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def query_providers() -> dict[str, Callable]:
    """{benchmark: test_queries(root)} registered under the `coalm.test_queries` entry-point group."""
    from importlib.metadata import entry_points

    return {ep.name: ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)}


def collect_queries(root: str | Path, providers: dict[str, Callable]) -> dict[str, list[str]]:
    """{benchmark: its test queries under `root`}; benchmarks with no test data there are left out."""
    out = {name: list(fn(root)) for name, fn in providers.items()}
    return {name: qs for name, qs in out.items() if qs}


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
    def from_providers(cls, root: str | Path, providers: dict[str, Callable] | None = None, **kw):
        """An index over every provider's test queries under `root` (default providers: `query_providers()`)."""
        providers = query_providers() if providers is None else providers
        if not providers:
            raise DataError(f"no benchmark test-query providers registered (entry-point group {ENTRY_POINT_GROUP}); "
                            "reinstall the package (pip install -e .) or pass --no-decontaminate")
        queries = collect_queries(root, providers)
        if not queries:
            raise DataError(f"no benchmark test sets under {root} ({', '.join(sorted(providers))}) to check against")
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
