"""The agent data recipe: every CoALM-IT source under the data root plus synthetic function calling, decontaminated
against the benchmarks' test queries, mixed with per-source weights.

Sources (rows from every split that is not a test split, all shards of each):
  snips_dst   SNIPS train + validate -> DST rows (`coalm.data.builders.build_snips_dst`)
  sgd_la      SGD train + dev service calls -> function-calling rows (`build_sgd_la`)
  sgd_cra     SGD train + dev -> conversational ReAct action and response rows (`build_sgd_cra`)
  sgd_dst     SGD train + dev -> multi-turn DST rows (`coalm.agent.sgd_dst`)
  synth_la    synthetic function calling over many made-up APIs (`coalm.data.synth`)
The contamination check asks each evaluator for its own test queries (`test_queries(root)` of every benchmark in
`coalm.eval.REGISTRY`) and drops overlapping rows from the mixture. Rows longer than `max_chars` characters are left out (they
would be cut at training time, and on two CPU cores their cost is better spent on more rows).
"""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path

from coalm.data.builders import build_sgd_cra, build_sgd_la, build_snips_dst
from coalm.data.contamination import ContaminationIndex, collect_queries
from coalm.data.formats import row_format
from coalm.data.mix import mix
from coalm.data.synth import generate_la
from engine.data.rows import DataError

from .sgd_dst import build_sgd_dst

SGD_SPLITS = ("train", "dev")
# The `make agent` mixture: weights are copies of each source's rows (fractions subsample), chosen so that the
# function-calling formats dominate (BFCL and API-Bank) while DST keeps enough rows for MultiWOZ.
AGENT_WEIGHTS = {"synth_la": 1.0, "sgd_la": 1.0, "snips_dst": 0.1, "sgd_dst": 0.25, "sgd_cra": 0.15}
AGENT_SYNTH_ROWS = 3400
SOURCE_FOLDERS = {"snips_dst": "snips", "sgd_la": "sgd", "sgd_cra": "sgd", "sgd_dst": "sgd", "synth_la": None}


def parse_weights(text: str | None) -> dict[str, float]:
    """`SOURCE=W,...` over the defaults AGENT_WEIGHTS."""
    weights = dict(AGENT_WEIGHTS)
    for part in filter(None, (text or "").split(",")):
        name, sep, val = part.partition("=")
        name = name.strip()
        if not sep or name not in SOURCE_FOLDERS:
            raise DataError(f"--weights: {part!r} is not SOURCE=NUMBER with SOURCE in {', '.join(SOURCE_FOLDERS)}")
        try:
            weights[name] = float(val)
        except ValueError:
            raise DataError(f"--weights: {part!r} is not SOURCE=NUMBER") from None
    return weights


def _sgd_splits(root: Path) -> list[str]:
    return [s for s in SGD_SPLITS if (root / "sgd" / s).is_dir()]


def build_source(name: str, root: Path, seed: int = 0, n_synth: int = AGENT_SYNTH_ROWS) -> list[dict]:
    if name not in SOURCE_FOLDERS:
        raise DataError(f"unknown agent source {name!r}; valid: {', '.join(SOURCE_FOLDERS)}")
    folder = SOURCE_FOLDERS[name]
    if folder is not None and not (root / folder).is_dir():
        raise DataError(f"agent recipe source {name}: folder {root / folder} is missing")
    if name == "synth_la":
        return generate_la(n_synth, seed=seed)
    if name == "snips_dst":
        return build_snips_dst(root, "train") + build_snips_dst(root, "validate")
    splits = _sgd_splits(root)
    if not splits:
        raise DataError(f"agent recipe source {name}: no SGD split folders ({', '.join(SGD_SPLITS)}) under {root / 'sgd'}")
    fn = {"sgd_la": lambda s: build_sgd_la(root, s, seed=seed), "sgd_cra": lambda s: build_sgd_cra(root, s),
          "sgd_dst": lambda s: build_sgd_dst(root, s, seed=seed)}[name]
    return [r for s in splits for r in fn(s)]


def evaluator_queries(root: Path) -> dict[str, list[str]]:
    """{benchmark: test queries} from each registered evaluator that has a `test_queries(root)` (the embedded
    sample has none: it is project-made and trained on by design)."""
    from coalm.eval import REGISTRY

    modules = {name: importlib.import_module(mod) for name, mod in REGISTRY.items()}
    return collect_queries(root, {n: m.test_queries for n, m in modules.items() if hasattr(m, "test_queries")})


def build(root: str | Path, weights: dict[str, float] | None = None, seed: int = 0, n_synth: int = AGENT_SYNTH_ROWS,
          max_chars: int = 3000, val_frac: float = 0.0, decontaminate: bool = True,
          log=print) -> tuple[list[dict], list[dict], dict]:
    """(train rows, validation rows, stats). Sources with weight 0 are not built at all."""
    root = Path(root)
    weights = dict(AGENT_WEIGHTS if weights is None else weights)
    names = [n for n, w in weights.items() if w > 0]
    sources = {n: build_source(n, root, seed=seed, n_synth=n_synth) for n in names}
    stats: dict = {"built": {n: len(r) for n, r in sources.items()}}
    for n, rows in sources.items():
        sources[n] = [r for r in rows if len(r["instruction"]) + len(r["input"]) + len(r["output"]) <= max_chars]
    stats["within_max_chars"] = {n: len(r) for n, r in sources.items()}
    train, val, mstats = mix(sources, {n: weights[n] for n in names}, val_frac=val_frac, seed=seed)
    stats["mix"] = mstats
    if decontaminate:  # after mixing: only the rows kept are checked (the check costs more than building)
        queries = evaluator_queries(root)
        if not queries:
            raise DataError(f"no benchmark test sets under {root} to decontaminate against (pass --no-decontaminate)")
        index = ContaminationIndex(queries)
        stats["test_queries"] = index.sizes
        train, dropped = index.filter(train)
        val, dropped_val = index.filter(val)
        stats["dropped"] = {"train": dropped, "val": dropped_val}
        if dropped or dropped_val:
            log(f"dropped rows overlapping test sets: train {dropped}, validation {dropped_val}")
    stats["formats"] = dict(Counter(row_format(r) for r in train))
    return train, val, stats
