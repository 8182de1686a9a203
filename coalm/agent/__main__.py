"""`python -m coalm.agent`: the CoALM agent recipe end to end, or one of its steps.

    python -m coalm.agent                                   # = make agent: build -> train -> scorecard (long)
    python -m coalm.agent build --out data/agent.jsonl [--weights synth_la=1,sgd_cra=0.05] [--synth-rows 3000]
    python -m coalm.agent stats data/agent.jsonl [--tokenizer smollm2-135m]
    python -m coalm.agent run --out runs/agent [--steps 300] [--skip-train] [engine.train flags after --]

`build` mixes every CoALM-IT source under the data root with synthetic function calling and drops rows that overlap
the benchmarks' test queries (see `coalm.agent.recipe`). `stats` reports rows and tokens per format. `run` (the
default) builds the recipe, fine-tunes the embedded SmolLM2-135M with LoRA through `python -m engine.train`, then
prints the base-vs-tuned scorecard of `python -m coalm.eval --suite coalm` in both prompt styles (see
`coalm.agent.pipeline`). User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from coalm.data.formats import row_format
from coalm.paths import data_root
from engine.data.rows import DataError, load_rows, save_rows

from .pipeline import add_arguments as add_run_flags
from .pipeline import run as run_pipeline
from .recipe import AGENT_SYNTH_ROWS, AGENT_WEIGHTS, build, parse_weights


def cmd_build(a) -> int:
    root = data_root(a.data_root)
    train, val, stats = build(root, parse_weights(a.weights), seed=a.seed, n_synth=a.synth_rows,
                              max_chars=a.max_chars, val_frac=a.val_frac, decontaminate=not a.no_decontaminate,
                              log=lambda m: print(m, file=sys.stderr))
    out = Path(a.out)
    save_rows(train, out)
    if val:
        save_rows(val, out.with_name(out.stem + ".val" + out.suffix))
    print(json.dumps(stats))
    print(f"wrote {len(train)} rows to {out}" + (f" (+{len(val)} validation rows)" if val else ""))
    return 0


def token_stats(rows: list[dict], tokenizer: str, max_seq_len: int) -> dict:
    from engine.data.render import render_rows
    from engine.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    per = defaultdict(lambda: {"rows": 0, "tokens": 0, "target_tokens": 0})
    for row in rows:
        rendered, _ = render_rows([row], tok, max_len=max_seq_len)
        s = per[row_format(row)]
        s["rows"] += 1
        if rendered:
            ids, labels = rendered[0]
            s["tokens"] += len(ids)
            s["target_tokens"] += sum(1 for y in labels if y != -100)
    return {"tokenizer": tok.name, "max_seq_len": max_seq_len, "formats": dict(per),
            "total": {k: sum(s[k] for s in per.values()) for k in ("rows", "tokens", "target_tokens")}}


def cmd_stats(a) -> int:
    rows = load_rows(a.file)
    if not rows:
        raise DataError(f"{a.file}: no rows")
    out = token_stats(rows, a.tokenizer, a.max_seq_len)
    out["sources"] = dict(Counter((r.get("meta") or {}).get("source", "?") for r in rows))
    print(json.dumps(out, indent=1))
    return 0


def _add_build_flags(p) -> None:
    p.add_argument("--data-root", default=None, help="default: $COALM_DATA, else ../shared/data")
    p.add_argument("--weights", default=None, help=f"SOURCE=W,... over the defaults {AGENT_WEIGHTS}")
    p.add_argument("--synth-rows", type=int, default=AGENT_SYNTH_ROWS)
    p.add_argument("--max-chars", type=int, default=3600, help="leave out longer rows")
    p.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    p = argparse.ArgumentParser(prog="python -m coalm.agent", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the agent data recipe")
    b.add_argument("--out", required=True, help=".jsonl or .parquet")
    b.add_argument("--val-frac", type=float, default=0.0)
    b.add_argument("--no-decontaminate", action="store_true")
    _add_build_flags(b)
    s = sub.add_parser("stats", help="rows and tokens per format")
    s.add_argument("file")
    s.add_argument("--tokenizer", default="smollm2-135m")
    s.add_argument("--max-seq-len", type=int, default=1024)
    r = sub.add_parser("run", help="build -> train -> scorecard (the default)")
    _add_build_flags(r)
    add_run_flags(r)
    a, rest = p.parse_known_args(argv)
    if rest and a.cmd != "run":
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if a.cmd == "run":
            return run_pipeline(a, rest)
        return {"build": cmd_build, "stats": cmd_stats}[a.cmd](a)
    except (DataError, ValueError, OSError, RuntimeError) as e:  # RuntimeError: a pipeline step failed
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
