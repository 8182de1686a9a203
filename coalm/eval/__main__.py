"""Score a model, an endpoint, or a file of saved outputs on one benchmark and write a report JSON.

    python -m coalm.eval --bench bfcl --responses result.jsonl --out reports/bfcl.json
    python -m coalm.eval --bench bfcl --model smollm2-135m --adapter out/adapter --category simple --limit 50
    python -m coalm.eval --bench multiwoz --data-root /data --responses preds.json
    python -m coalm.eval --bench api-bank --base-url http://127.0.0.1:8000/v1 --model-name coalm --concurrency 8
    python -m coalm.eval --suite coalm --model smollm2-135m --adapter runs/agent/adapter   (see coalm.eval.suite)

With --model or --base-url the raw outputs are saved next to the report (`<report stem>.responses<suffix>`, in the
benchmark's own format) so they can be re-scored with --responses, and every answered item goes to a per-item cache
(`<report stem>.cache.jsonl`): the same command run again (same --out) sends only the items not yet answered. A
failed request is that item's error, listed in the report; the run goes on (--max-errors N stops it early, exit 1).
Every benchmark's own flags are listed below under its name. User errors (bad flags, missing data, malformed files)
print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from coalm.eval.base import EvalError
from coalm.eval.options import ModelOptions, RunOptions, add_flags, flag_names
from coalm.eval.pipeline import evaluate
from coalm.eval.registry import REGISTRY, get_task
from coalm.eval.task import STYLES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m coalm.eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="The suite (--suite coalm) has its own flags: python -m coalm.eval --suite coalm "
                                       "--help")
    p.add_argument("--bench", required=True, choices=list(REGISTRY), help="benchmark to run")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--responses", help="score saved model outputs (the benchmark's own format)")
    src.add_argument("--model", help="generate with this model: preset name, HF checkpoint dir or .gguf file")
    src.add_argument("--base-url", help="generate through this OpenAI-compatible endpoint (e.g. http://host:8000/v1)")
    p.add_argument("--prompt-style", default="official", choices=list(STYLES),
                   help="official: the benchmark's own prompts; coalm: the CoALM-IT formats (models trained on them)")
    p.add_argument("--out", default=None, help="report path (default: reports/<bench>-<timestamp>.json)")
    add_flags(p.add_argument_group("run"), RunOptions)
    add_flags(p.add_argument_group("--model"), ModelOptions)
    for name in REGISTRY:  # every benchmark's flags, shown in --help; only the chosen benchmark's are accepted
        try:
            task = get_task(name)
        except EvalError:
            continue
        if flag_names(task.Options):
            add_flags(p.add_argument_group(f"--bench {name}"), task.Options, suppress=True)
    return p


def _check_bench_flags(args) -> dict:
    """The chosen benchmark's options given on the command line; another benchmark's flag is an error."""
    task = get_task(args.bench)
    own = {f.removeprefix("--").replace("-", "_") for f in flag_names(task.Options)}
    given = {}
    for name in REGISTRY:
        if name == args.bench:
            continue
        try:
            other = get_task(name)
        except EvalError:
            continue
        for flag in flag_names(other.Options):
            dest = flag.removeprefix("--").replace("-", "_")
            if dest not in own and dest in vars(args):
                raise EvalError(f"{flag} is a flag of --bench {name}, not of --bench {args.bench}")
    for dest in own:
        if dest in vars(args):
            given[dest] = getattr(args, dest)
    return given


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
    args = _parser().parse_args(argv)
    options = {f.removeprefix("--").replace("-", "_"): None for f in flag_names(RunOptions) + flag_names(ModelOptions)}
    options = {k: getattr(args, k) for k in options}
    options.update(_check_bench_flags(args))
    out = Path(args.out or f"reports/{args.bench}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    report = evaluate(args.bench, out, responses=args.responses, model=args.model, base_url=args.base_url,
                      style=args.prompt_style, quiet=False, argv=argv, **options)
    if report is None:
        return 0  # a helper rank of a torchrun job
    print_summary(report["summary"])
    if report.get("errors"):
        print(f"{len(report['errors'])} items failed to generate (listed under \"errors\" in the report)",
              file=sys.stderr)
    print(f"report: {out}")
    if report["meta"].get("stopped"):
        print(f"error: {report['meta']['stopped']}; run the same command again to resume", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    try:
        return run(argv)
    except (EvalError, ValueError, OSError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
