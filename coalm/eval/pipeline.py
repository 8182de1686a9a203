"""One evaluation: a benchmark's examples -> model outputs (or saved ones) -> its report. The CLI calls this.

    report = evaluate("bfcl", "reports/bfcl.json", model="smollm2-135m", category="simple", limit=8)
    report = evaluate("api-bank", responses="preds.jsonl")
    report = evaluate("multiwoz", backend=my_backend, style="coalm", limit=40)     # any object with .chat()

Options are the fields of `coalm.eval.options.RunOptions`, `ModelOptions` and the benchmark's own `Options`, by
name (`max_new_tokens=64`, `category="simple"`); each default lives there once. With `out`, the report is written
there, the outputs beside it in the benchmark's own format (`<stem>.responses<suffix>`, for `responses=` later),
and the runner's per-item cache as `<stem>.cache.jsonl`: run the same command again and only the items not yet
answered (by the same model and dtype, with the same output budget) are generated. Items whose request failed are
listed under the report's "errors" (and marked on their items); `max_errors` of them stop the run early (the report
then says so under meta.stopped).
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

from coalm.eval import runner
from coalm.eval.backends import is_rank0, make_backend
from coalm.eval.base import EvalError, data_root, write_report
from coalm.eval.options import ModelOptions, RunOptions, build, take
from coalm.eval.registry import get_task


def _chunk(backend, run: RunOptions, base_url) -> int:
    """Conversations per chat() call: what keeps the backend busy (a DP backend splits it over its replicas)."""
    return getattr(backend, "per_call", None) or (run.concurrency if base_url else run.batch_size)


def _settings(backend, run: RunOptions) -> dict:
    """What outputs depend on besides the prompt: cached outputs of another model, dtype or budget are not reused."""
    settings = {"backend": getattr(backend, "name", type(backend).__name__),
                "dtype": str(getattr(backend, "dtype", "")), "max_new_tokens": run.max_new_tokens}
    if run.constrained == "on":  # constrained outputs are not the free ones: cached separately
        settings["constrained"] = True
    return settings


def evaluate(bench: str, out=None, *, backend=None, responses=None, style: str = "official", model: str | None = None,
             base_url: str | None = None, quiet: bool = True, argv=None, **options) -> dict | None:
    """Score `bench` on saved `responses` (a file), or on outputs generated through `backend`, a local `model` or
    an endpoint at `base_url` (exactly one source). Returns the report (None on the non-writing ranks of a
    torchrun job). `quiet` keeps the loader's messages off stdout."""
    task = get_task(bench)
    style = task.check_style(options.pop("prompt_style", None) or style)
    run = build(RunOptions, take(RunOptions, options))
    model_options = build(ModelOptions, take(ModelOptions, options))
    bench_options = build(task.Options, options)
    sources = [name for name, v in (("responses", responses), ("backend", backend), ("model", model),
                                    ("base_url", base_url)) if v is not None]
    if len(sources) != 1:
        raise EvalError(f"give exactly one of responses, backend, model, base_url (got {', '.join(sources) or 'none'})")
    root = data_root(run.data_root)
    examples = task.load(root, bench_options, style)
    if run.limit is not None:
        examples = examples[:run.limit]
    if not examples:
        raise EvalError(f"no {bench} examples selected")
    out = Path(out) if out is not None else None
    outcome = runner.Outcome()
    if responses is not None:
        if not Path(responses).exists():
            raise EvalError(f"responses file not found: {responses}")
        answers = task.read_responses(responses)
        if answers and not any(ex["id"] in answers for ex in examples):
            raise EvalError(f"none of the {len(answers)} responses in {responses} matches a selected {bench} example "
                            "id (check the benchmark flags and --data-root)")
        responses_path = Path(responses)
    else:
        responses_path = out.with_name(out.stem + ".responses" + task.responses_suffix) if out else None
        cache = runner.ItemCache(out.with_name(out.stem + ".cache.jsonl")) if out else None

        def save(progress: runner.Outcome) -> None:  # an interrupted run still leaves its outputs to re-score
            if responses_path is not None and is_rank0():
                done = [ex for ex in examples if ex["id"] in progress.responses]
                task.write_responses(responses_path, done, as_responses(task, done, progress.responses))

        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            backend = backend or make_backend(model, base_url, run, model_options)
        if run.constrained == "on":  # --model: engine.structured grammars; --base-url: response_format json_schema
            for ex in examples:
                ex["constraint"] = task.constraint(ex)
        outcome = runner.generate(task, examples, backend, max_new_tokens=run.max_new_tokens,
                                  chunk=_chunk(backend, run, base_url), cache=cache, max_errors=run.max_errors,
                                  on_chunk=save, settings=_settings(backend, run))
        if not is_rank0():
            return None  # the other ranks of a torchrun job helped generate; rank 0 scores and writes
        done = [ex for ex in examples if ex["id"] in outcome.responses]
        answers = as_responses(task, done, outcome.responses)
        if responses_path is not None:
            task.write_responses(responses_path, done, answers)

    report = task.score(examples, answers)
    if outcome.errors:
        report["errors"] = dict(outcome.errors)
        for item in report.get("items", []):
            if item.get("id") in outcome.errors:
                item["generation_error"] = outcome.errors[item["id"]]
    report["meta"] = {
        "bench": bench, "data_root": str(root), "n_examples": len(examples),
        "responses": str(responses_path) if responses_path else None,
        "model": model or base_url or getattr(backend, "name", None), "adapter": model_options.adapter,
        "model_name": run.model_name, "prompt_style": style, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "argv": argv,
    }
    if outcome.stopped:
        report["meta"]["stopped"] = outcome.stopped
    if out is not None:
        write_report(report, out)
    return report


def as_responses(task, examples: list[dict], outputs: dict) -> dict:
    """The runner's raw outputs as the benchmark's responses (single-step texts go through responses_from_texts, in
    example order, which is what lets MultiWOZ's CoALM style merge states along a dialogue)."""
    single = [ex for ex in examples if not task.multi_step(ex)]
    answers = task.responses_from_texts(single, [outputs[ex["id"]] for ex in single])
    answers.update({ex["id"]: outputs[ex["id"]] for ex in examples if task.multi_step(ex)})
    return answers
