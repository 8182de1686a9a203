"""Score a model, or a file of its saved outputs, on one benchmark and write a report JSON.

    python -m coalm.eval --bench bfcl --responses result.jsonl --out reports/bfcl.json
    python -m coalm.eval --bench bfcl --model smollm2-135m --adapter out/adapter --category simple --limit 50
    python -m coalm.eval --bench multiwoz --data-root /data --responses preds.json

With --model the raw outputs are also saved next to the report (`<report stem>.responses<suffix>`, in the
benchmark's own format) so they can be re-scored with --responses. Each benchmark adds its own flags
(`python -m coalm.eval --bench bfcl --help`). User errors (bad flags, missing data, malformed files) print one
line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from coalm.eval import REGISTRY, get_task
from coalm.eval.base import EvalError, data_root, write_report


def _parser(task=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m coalm.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", required=True, choices=list(REGISTRY), help="benchmark to run")
    p.add_argument("--data-root", default=None, help="benchmark data root (default: $COALM_DATA, ../shared/data)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--responses", help="score saved model outputs (the benchmark's own format)")
    src.add_argument("--model", help="generate with this model: preset name, HF checkpoint dir or .gguf file")
    p.add_argument("--adapter", default=None, help="LoRA adapter dir to apply to --model")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples")
    p.add_argument("--out", default=None, help="report path (default: reports/<bench>-<timestamp>.json)")
    if task is not None and hasattr(task, "add_arguments"):
        task.add_arguments(p)
    return p


def _generate(task, examples, args, responses_path: Path) -> dict:
    from tqdm import tqdm

    import engine  # imported here: scoring saved outputs needs no torch

    model, tok = engine.load(args.model, adapter=args.adapter)
    texts: list[str] = []
    bar = tqdm(total=len(examples), desc=f"{args.bench} generate", unit="ex")
    for i in range(0, len(examples), args.batch_size):
        batch = examples[i:i + args.batch_size]
        texts += engine.generate(model, tok, [ex["messages"] for ex in batch],
                                 max_new_tokens=args.max_new_tokens, temperature=0.0)
        # Saved after every batch, so an interrupted run still leaves its outputs to re-score.
        task.write_responses(responses_path, examples[:len(texts)], task.responses_from_texts(examples, texts))
        bar.update(len(batch))
    bar.close()
    return task.responses_from_texts(examples, texts)


def _rows(summary: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _rows(value, name + ".")
        elif isinstance(value, float):
            rows.append((name, f"{value:.4f}"))
        elif isinstance(value, list):
            rows += [(name if i == 0 else "", str(v)) for i, v in enumerate(value)]
        else:
            rows.append((name, "n/a" if value is None else str(value)))
    return rows


def print_summary(summary: dict, file=None) -> None:
    file = file or sys.stdout
    rows = _rows(summary)
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=file)


def run(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--bench", choices=list(REGISTRY))
    known, _ = pre.parse_known_args(argv)
    try:
        task = get_task(known.bench) if known.bench else None
    except ImportError as e:
        raise EvalError(f"benchmark {known.bench!r} cannot be loaded: {e}") from None
    args = _parser(task).parse_args(argv)

    out = Path(args.out or f"reports/{args.bench}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    examples = task.load_examples(data_root(args.data_root), args)
    if args.limit is not None:
        examples = examples[:args.limit]
    if not examples:
        raise EvalError(f"no {args.bench} examples selected")

    if args.responses:
        if not Path(args.responses).exists():
            raise EvalError(f"responses file not found: {args.responses}")
        responses = task.read_responses(args.responses)
        if responses and not any(ex["id"] in responses for ex in examples):
            raise EvalError(f"none of the {len(responses)} responses in {args.responses} matches a selected "
                            f"{args.bench} example id (check the benchmark flags and --data-root)")
        responses_path = Path(args.responses)
    else:
        responses_path = out.with_name(out.stem + ".responses" + getattr(task, "RESPONSES_SUFFIX", ".json"))
        responses = _generate(task, examples, args, responses_path)
        task.write_responses(responses_path, examples, responses)

    report = task.evaluate(examples, responses)
    report["meta"] = {
        "bench": args.bench, "data_root": str(data_root(args.data_root)), "n_examples": len(examples),
        "responses": str(responses_path), "model": args.model, "adapter": args.adapter,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "argv": argv,
    }
    write_report(report, out)
    print_summary(report["summary"])
    print(f"report: {out}")
    return 0


def main(argv=None) -> int:
    try:
        return run(argv)
    except (EvalError, ValueError, OSError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
