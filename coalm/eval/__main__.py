"""Score a model, or a file of its saved outputs, on one benchmark and write a report JSON.

    python -m coalm.eval --bench bfcl --responses result.jsonl --out reports/bfcl.json
    python -m coalm.eval --bench bfcl --model smollm2-135m --adapter out/adapter --category simple --limit 50
    python -m coalm.eval --bench multiwoz --data-root /data --responses preds.json
    python -m coalm.eval --bench api-bank --base-url http://127.0.0.1:8000/v1 --model-name coalm --concurrency 8
    python -m coalm.eval --suite coalm --model smollm2-135m --adapter runs/agent/adapter   (see coalm.eval.suite)

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
from coalm.eval.backends import is_rank0, make_backend
from coalm.eval.base import EvalError, data_root, write_report


def _parser(task=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m coalm.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", required=True, choices=list(REGISTRY), help="benchmark to run")
    p.add_argument("--data-root", default=None, help="benchmark data root (default: $COALM_DATA, ../shared/data)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--responses", help="score saved model outputs (the benchmark's own format)")
    src.add_argument("--model", help="generate with this model: preset name, HF checkpoint dir or .gguf file")
    src.add_argument("--base-url", help="generate through this OpenAI-compatible endpoint (e.g. http://host:8000/v1)")
    p.add_argument("--adapter", default=None, help="LoRA adapter dir to apply to --model")
    p.add_argument("--quantize", default=None, choices=["nf4"], help="store --model's base linear weights in NF4")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="--model's dtype; auto: bf16 on GPUs and AVX512-BF16/AMX CPUs, else fp32")
    p.add_argument("--model-name", default=None, help="model name sent to --base-url (default: its first model)")
    p.add_argument("--api-key", default=None, help="bearer token for --base-url (default: $OPENAI_API_KEY)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight against --base-url")
    p.add_argument("--prompt-style", default="official", choices=["official", "coalm"],
                   help="official: the benchmark's own prompts; coalm: the CoALM-IT formats (models trained on them)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree of --model under torchrun; the replicas "
                   "(world size / tp) split the examples, rank 0 writes the report")
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples")
    p.add_argument("--out", default=None, help="report path (default: reports/<bench>-<timestamp>.json)")
    if task is not None and hasattr(task, "add_arguments"):
        task.add_arguments(p)
    return p


def _generate(task, examples, args, responses_path: Path, backend=None) -> dict:
    """Model outputs for `examples` through a backend (a local model or an endpoint). A task with its own
    `generate(examples, backend, args, save)` (several model steps per item) runs it; the others get one
    `chat` call per example, in chunks, with the outputs saved after every chunk so that an interrupted run still
    leaves them to re-score."""
    from tqdm import tqdm

    backend = backend or make_backend(args)

    def save(done: list[dict], responses: dict) -> None:
        if is_rank0():  # under torchrun every rank holds all outputs; one writes them
            task.write_responses(responses_path, done, responses)

    if hasattr(task, "generate"):
        return task.generate(examples, backend, args, save)
    texts: list[str] = []
    step = getattr(backend, "per_call", None) or max(1, args.batch_size if getattr(args, "base_url", None) is None
                                                     else args.concurrency)
    bar = tqdm(total=len(examples), desc=f"{args.bench} generate", unit="ex", disable=not is_rank0())
    for i in range(0, len(examples), step):
        batch = examples[i:i + step]
        texts += backend.chat([ex["messages"] for ex in batch], max_new_tokens=args.max_new_tokens)
        save(examples[:len(texts)], task.responses_from_texts(examples[:len(texts)], texts))
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
    if any(a == "--suite" or a.startswith("--suite=") for a in argv):
        from coalm.eval import suite  # the three benchmarks in one scorecard

        return suite.main(argv)
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
        if not is_rank0():
            return 0  # the other ranks of a torchrun job helped generate; rank 0 scores and writes
        task.write_responses(responses_path, examples, responses)

    report = task.evaluate(examples, responses)
    report["meta"] = {
        "bench": args.bench, "data_root": str(data_root(args.data_root)), "n_examples": len(examples),
        "responses": str(responses_path), "model": args.model or args.base_url, "adapter": args.adapter,
        "model_name": args.model_name, "prompt_style": args.prompt_style,
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
