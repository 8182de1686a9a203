"""BFCL's test queries, for keeping them out of training data (`coalm.agent` asks every evaluator for its own)."""

from __future__ import annotations

from pathlib import Path

from coalm.eval.base import read_jsonl


def test_queries(root) -> list[str]:
    """Every user turn of every `BFCL_v3_*.json` under `<root>/bfcl` (all categories, multi-turn included);
    [] when there is no BFCL data there."""
    out = []
    for path in sorted((Path(root) / "bfcl").glob("BFCL_v3_*.json")):
        for row in read_jsonl(path, keys=("question",)):
            for turn in row["question"]:
                out += [m["content"] for m in turn if m.get("role") == "user" and isinstance(m.get("content"), str)]
    return out


test_queries.__test__ = False  # a data function, not a pytest test, when a test module imports it
